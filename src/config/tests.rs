//! Unit tests of loading and validation: each checks the key an error names, or the value a
//! setting gets. They only write temporary files; they must not open sockets or start anything.

use super::*;
use crate::sip::transport::Transport;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

const GOOD: &str = r#"
[instance]
name = "a"
[[listen]]
transport = "udp"
address = "127.0.0.1:5060"
[[pair]]
name = "site-a"
primary = "127.0.0.11:5060;transport=udp"
backup = "127.0.0.12"
"#;

fn file(text: &str) -> tempfile_lite::TempFile {
    let f = tempfile_lite::TempFile::new();
    let mut h = std::fs::File::create(&f.path).unwrap();
    h.write_all(text.as_bytes()).unwrap();
    f
}

mod tempfile_lite {
    pub struct TempFile {
        pub path: std::path::PathBuf,
    }
    impl TempFile {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "sippool-cfg-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            TempFile { path }
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[test]
fn good_config_validates_with_defaults() {
    let f = file(GOOD);
    let s = Config::load_with_env(&f.path, Some(HashMap::new()))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.advertised_host, "127.0.0.1");
    assert_eq!(s.pairs[0].backup.port, 5060);
    assert_eq!(s.pairs[0].backup.transport, Transport::Udp);
    assert_eq!(s.invite_rate, 0);
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let f = file(&format!("{GOOD}\n[overload]\ninvite_rat = 5\n"));
    let e = Config::load_with_env(&f.path, Some(HashMap::new())).unwrap_err();
    assert!(e.to_string().contains("invite_rat"), "{e}");
}

#[test]
fn environment_overrides_a_key() {
    let f = file(GOOD);
    let env = HashMap::from([(
        "SIPPOOL__OVERLOAD__INVITE_RATE".to_string(),
        "42".to_string(),
    )]);
    let s = Config::load_with_env(&f.path, Some(env))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.invite_rate, 42);
}

#[test]
fn bad_value_names_the_key() {
    let f = file(GOOD);
    let env = HashMap::from([(
        "SIPPOOL__OVERLOAD__INVITE_RATE".to_string(),
        "lots".to_string(),
    )]);
    let e = Config::load_with_env(&f.path, Some(env)).unwrap_err();
    assert_eq!(e.key, "overload.invite_rate", "{e}");
}

#[test]
fn bad_upstream_names_the_key() {
    let f = file(&GOOD.replace("127.0.0.12\"", "127.0.0.12;transport=carrier-pigeon\""));
    let e = Config::load_with_env(&f.path, Some(HashMap::new()))
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "pair[0].backup");
    assert!(e.problem.contains("carrier-pigeon"));
}

fn validate_text(text: &str) -> Result<Settings, ConfigError> {
    let f = file(text);
    Config::load_with_env(&f.path, Some(HashMap::new()))?.validate()
}

#[test]
fn tls_upstream_needs_a_ca_to_verify_it() {
    let tls = GOOD.replace("127.0.0.12\"", "127.0.0.12;transport=tls\"");
    let e = validate_text(&tls).unwrap_err();
    assert_eq!(e.key, "pair[0].backup");
    assert!(e.problem.contains("tls.upstream_ca"), "{e}");
    let f = file("-----BEGIN CERTIFICATE-----\n");
    let ca = f.path.display();
    let s = validate_text(&format!("{tls}[tls]\nupstream_ca = \"{ca}\"\n")).unwrap();
    assert_eq!(s.pairs[0].backup.transport, Transport::Tls);
    assert_eq!(s.pairs[0].backup.port, 5061);
    // A TLS listener still needs a certificate and key.
    let listener = format!("{tls}[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:5061\"\n[tls]\nupstream_ca = \"{ca}\"\n");
    assert_eq!(
        validate_text(&listener).unwrap_err().key,
        "listen[1].transport"
    );
    let half = format!("{GOOD}[tls]\ncert = \"{ca}\"\n");
    assert_eq!(validate_text(&half).unwrap_err().key, "tls.key");
}

#[test]
fn keepalive_defaults_and_bounds() {
    let s = validate_text(GOOD).unwrap();
    assert_eq!(
        s.keepalive,
        Some(Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 3
        })
    );
    let off = validate_text(&format!("{GOOD}[keepalive]\nidle_s = 0\n")).unwrap();
    assert_eq!(off.keepalive, None);
    let bad = validate_text(&format!("{GOOD}[keepalive]\ncount = 0\n")).unwrap_err();
    assert_eq!(bad.key, "keepalive.count");
}

#[test]
fn unknown_serving_pair_is_an_error() {
    let f = file(&format!("{GOOD}\n[routing]\nserving_pair = \"nope\"\n"));
    let e = Config::load_with_env(&f.path, Some(HashMap::new()))
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "routing.serving_pair");
}

#[test]
fn unspecified_listen_needs_advertised_host() {
    let f = file(&GOOD.replace("127.0.0.1:5060", "0.0.0.0:5060"));
    let e = Config::load_with_env(&f.path, Some(HashMap::new()))
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "instance.advertised_host");
}

#[test]
fn host_port_forms() {
    let hp: HostPort = "[::1]:5070;transport=tcp".parse().unwrap();
    assert_eq!(hp.host, "::1");
    assert_eq!(hp.port, 5070);
    assert_eq!(hp.transport, Transport::Tcp);
    assert!("::1:5060".parse::<HostPort>().is_err());
    assert!("pbx.example.com".parse::<HostPort>().is_ok());
    assert!("10.0.0.1:99999".parse::<HostPort>().is_err());
}

#[test]
fn log_level_keeps_ractor_quiet_and_a_bad_filter_names_the_key() {
    let valid = |extra: &str| Config::from_toml_str(&format!("{GOOD}{extra}"))?.validate();
    assert_eq!(valid("").unwrap().log_filter, "info,ractor=warn");
    assert_eq!(
        valid("[log]\nlevel = \"debug,sippool::health=trace\"\n")
            .unwrap()
            .log_filter,
        "debug,sippool::health=trace,ractor=warn"
    );
    assert_eq!(
        valid("[log]\nlevel = \"info,ractor=debug\"\n")
            .unwrap()
            .log_filter,
        "info,ractor=debug"
    );
    for bad in ["", "sippool=loud"] {
        let e = valid(&format!("[log]\nlevel = \"{bad}\"\n")).unwrap_err();
        assert_eq!(e.key, "log.level", "{bad}: {e}");
    }
}

#[test]
fn trying_delay_is_read_and_must_end_before_t1() {
    let s = validate_text(&format!("{GOOD}\n[timers]\ntrying_ms = 0\n")).unwrap();
    assert_eq!(s.timers.trying, std::time::Duration::ZERO);
    let s = validate_text(GOOD).unwrap();
    assert_eq!(s.timers.trying, std::time::Duration::from_millis(200));
    // A short T1 brings the default down with it: the 100 still goes before T1.
    let s = validate_text(&format!("{GOOD}\n[timers]\nt1_ms = 100\n")).unwrap();
    assert_eq!(s.timers.trying, std::time::Duration::from_millis(50));
    let e =
        validate_text(&format!("{GOOD}\n[timers]\nt1_ms = 500\ntrying_ms = 500\n")).unwrap_err();
    assert_eq!(e.key, "timers.trying_ms", "{e}");
}
