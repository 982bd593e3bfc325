//! Data-plane commands carried by the control channel (being built).
