//! Per-listener options over loopback: PROXY protocol v2 on a stream listener behind an L4
//! load balancer (the client's address comes from the header: Via `received`/`rport`,
//! per-address caps; a connection without the header is refused), and the host and port
//! each listener writes into Via and Record-Route.

mod support;

use std::net::{IpAddr, SocketAddr};

use sippool::actors::Proxy;
use sippool::config::Config;
use sippool::sip::transport::Transport;
use support::*;
use tokio::io::AsyncWriteExt;

/// A proxy on a fresh loopback address whose `[[listen]]` sections are `listens` (each
/// the TOML lines after `address`; `{ip}` stands for the proxy's address).
async fn proxy_with(listens: &[(&str, &str)], extra: &str) -> (Proxy, IpAddr) {
    let ip = loopback(PROXY);
    let mut toml = format!("[instance]\nname = \"test\"\nadvertised_host = \"{ip}\"\n");
    for (transport, lines) in listens {
        toml.push_str(&format!(
            "[[listen]]\ntransport = \"{transport}\"\naddress = \"{ip}:0\"\n{}\n",
            lines.replace("{ip}", &ip.to_string())
        ));
    }
    toml.push_str(extra);
    let settings = Config::from_toml_str(&toml)
        .expect("config")
        .validate()
        .expect("valid config");
    (Proxy::start(settings).await.expect("proxy starts"), ip)
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `client` to `server`.
fn proxy_v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(s)) = (client, server) else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&s.port().to_be_bytes());
    h
}

/// A phone behind the balancer: a TCP connection that starts with the header naming
/// `client`.
async fn phone_via_balancer(proxy: SocketAddr, client: SocketAddr) -> Phone {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(&proxy_v2(client, proxy)).await.unwrap();
    Phone::over_stream(stream, client, proxy, "TCP")
}

#[tokio::test]
async fn behind_a_balancer_the_client_address_comes_from_the_proxy_header() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let (p, _) = proxy_with(
        &[("udp", ""), ("tcp", "proxy_protocol = true")],
        &format!(
            "{}[limits]\nmax_connections_per_ip = 1\n",
            pair(&up.uri(), "127.0.0.1:9;transport=udp")
        ),
    )
    .await;
    let tcp = p.local_addr(Transport::Tcp).unwrap();
    let client: SocketAddr = "198.51.100.7:5062".parse().unwrap();

    let mut phone = phone_via_balancer(tcp, client).await;
    let call_id = unique("pp");
    phone
        .send(&phone.request(
            "OPTIONS",
            "sip:bob@site.example",
            &call_id,
            &unique("z9hG4bKp"),
            "",
            "",
        ))
        .await;
    let got = up.recv_method("OPTIONS").await;
    let vias = got.all("via");
    assert!(
        vias[1].contains("received=198.51.100.7") && vias[1].contains("rport=5062"),
        "the client's address, not the balancer's: {vias:?}"
    );
    assert_eq!(phone.recv_final().await.0.status(), Some(200));

    // The per-address cap counts the client: a second connection for the same client is
    // refused, one for another client is not.
    let mut same = phone_via_balancer(tcp, client).await;
    assert!(
        same.closed_within(WAIT).await,
        "second connection of one client"
    );
    let mut other = phone_via_balancer(tcp, "198.51.100.8:5062".parse().unwrap()).await;
    other
        .send(&other.request(
            "OPTIONS",
            "sip:bob@site.example",
            &unique("pp"),
            &unique("z9hG4bKq"),
            "",
            "",
        ))
        .await;
    assert_eq!(other.recv_final().await.0.status(), Some(200));

    // No header: refused, and counted.
    let stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let local = stream.local_addr().unwrap();
    let mut bare = Phone::over_stream(stream, local, tcp, "TCP");
    bare.send(&bare.request(
        "OPTIONS",
        "sip:bob@site.example",
        &unique("pp"),
        &unique("z9hG4bKr"),
        "",
        "",
    ))
    .await;
    assert!(
        bare.closed_within(WAIT).await,
        "a connection without the header"
    );
    let metrics = p.core().metrics.encode();
    assert_eq!(
        sample(
            &metrics,
            "sippool_messages_dropped_total{reason=\"proxy_protocol_header\"}"
        ),
        1.0,
        "{metrics}"
    );
    // The UDP listener has no such option: plain datagrams still work.
    let mut udp = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    udp.send(&udp.request(
        "OPTIONS",
        "sip:bob@site.example",
        &unique("pp"),
        &unique("z9hG4bKu"),
        "",
        "",
    ))
    .await;
    assert_eq!(udp.recv_final().await.0.status(), Some(200));
    drop(p);
}

#[tokio::test]
async fn a_config_names_the_listener_key_it_refuses() {
    for (listen, key) in [
        (
            "transport = \"udp\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true",
            "listen[0].proxy_protocol",
        ),
        (
            "transport = \"udp\"\naddress = \"127.0.0.1:0\"\ndscp = 64",
            "listen[0].dscp",
        ),
        (
            "transport = \"udp\"\naddress = \"127.0.0.1:0\"\nadvertised_port = 5070",
            "listen[0].advertised_port",
        ),
    ] {
        let toml = format!(
            "[instance]\nname = \"t\"\n[[listen]]\n{listen}\n{}",
            pair("127.0.0.1:9;transport=udp", "127.0.0.1:10;transport=udp")
        );
        let e = Config::from_toml_str(&toml)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, key, "{e:?}");
    }
}
