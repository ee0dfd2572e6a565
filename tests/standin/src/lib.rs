//! Stand-in for the platform endpoints (being written).
