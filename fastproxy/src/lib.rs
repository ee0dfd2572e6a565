//! fastproxy
