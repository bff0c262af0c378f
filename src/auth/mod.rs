//! Who may connect. For now the `Origin` check (`server.allowed_origins`); credentials
//! and policies (`[auth]`, `[[policy]]`) join this module when they are implemented.

pub mod origin;
