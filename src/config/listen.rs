//! The listen address, as `server.listen` and `--listen` take it: `IP:PORT`, plus
//! `localhost:PORT` (what people type first), which means the IPv4 loopback. Other host
//! names are refused with a hint rather than resolved: a broker should not bind to
//! whatever a resolver answers at start-up.

use serde::{Deserialize, Deserializer};
use std::net::{Ipv4Addr, SocketAddr};

/// Parses a listen address, with a message that says what is accepted.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
    }
    let hint = match s.rsplit_once(':') {
        Some(("", port)) => format!(" (for every interface: 0.0.0.0:{port})"),
        None if s.parse::<u16>().is_ok() => format!(" (for every interface: 0.0.0.0:{s})"),
        _ => String::new(),
    };
    Err(format!(
        "{s:?} is not IP:PORT; use e.g. 127.0.0.1:9000 (this machine only), 0.0.0.0:8080 \
         (every IPv4 interface), [::]:8080 or localhost:9000{hint}"
    ))
}

/// `deserialize_with` for `server.listen`.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn accepts_ip_port_and_localhost() {
        assert_eq!(parse_listen("127.0.0.1:9000").map(|a| a.port()), Ok(9000));
        assert_eq!(parse_listen("[::]:80").map(|a| a.is_ipv6()), Ok(true));
        let local = parse_listen("localhost:9000");
        assert_eq!(
            local.map(|a| a.to_string()),
            Ok("127.0.0.1:9000".to_owned())
        );
    }

    #[test]
    fn refusals_say_what_works() {
        let refusal = |s: &str| parse_listen(s).err().unwrap_or_default();
        let e = refusal("example.com:80");
        assert!(
            e.contains("127.0.0.1:9000") && e.contains("example.com"),
            "{e}"
        );
        assert!(refusal(":8080").contains("0.0.0.0:8080"));
        assert!(refusal("8080").contains("0.0.0.0:8080"));
        assert!(parse_listen("localhost:99999").is_err());
    }
}
