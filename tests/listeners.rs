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

/// A proxy on a fresh loopback address whose `[[listen]]` sections are `listens`: the
/// transport, another address than the proxy's if any, and the TOML lines after `address`.
async fn proxy_with(listens: &[(&str, Option<IpAddr>, &str)], extra: &str) -> (Proxy, IpAddr) {
    let ip = loopback(PROXY);
    let mut toml = format!("[instance]\nname = \"test\"\nadvertised_host = \"{ip}\"\n");
    for (transport, other, lines) in listens {
        let at = other.unwrap_or(ip);
        toml.push_str(&format!(
            "[[listen]]\ntransport = \"{transport}\"\naddress = \"{at}:0\"\n{lines}\n"
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
        &[("udp", None, ""), ("tcp", None, "proxy_protocol = true")],
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

#[tokio::test]
async fn each_listener_writes_its_own_advertised_address() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let ip_b = loopback(PROXY);
    let (p, _) = proxy_with(
        &[
            ("udp", None, "advertised_host = \"sip-a.example.net\""),
            (
                "udp",
                Some(ip_b),
                "advertised_host = \"203.0.113.9\"\nadvertised_port = 5080",
            ),
        ],
        // One worker: the Via names the listener's own port (with several, the sending
        // worker's: tests/workers.rs).
        &format!(
            "{}[runtime]\nworkers = 1\n",
            pair(&up.uri(), "127.0.0.1:9;transport=udp")
        ),
    )
    .await;
    let addrs: Vec<SocketAddr> = p
        .local_addrs()
        .iter()
        .filter(|(t, _)| *t == Transport::Udp)
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(addrs.len(), 2);
    // The phone reaches the instance through the second listener (its public address);
    // the request leaves toward the server through the first.
    let mut phone = Phone::udp(addrs[1]).await;
    let call_id = unique("adv");
    phone
        .send(&phone.request(
            "INVITE",
            "sip:bob@site.example",
            &call_id,
            &unique("z9hG4bKa"),
            "",
            "",
        ))
        .await;
    let invite = up.recv_method("INVITE").await;
    let vias = invite.all("via");
    assert!(
        vias[0].starts_with(&format!(
            "SIP/2.0/UDP sip-a.example.net:{};branch=",
            addrs[0].port()
        )),
        "our Via names the listener it left by: {vias:?}"
    );
    let rr = invite.all("record-route");
    assert_eq!(rr.len(), 2, "one entry per side: {rr:?}");
    assert_eq!(
        rr[0],
        format!("<sip:sip-a.example.net:{};lr>", addrs[0].port())
    );
    assert!(
        rr[1].starts_with("<sip:") && rr[1].ends_with("@203.0.113.9:5080;lr>"),
        "the phone's side names the listener it came in by: {rr:?}"
    );
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    // The phone's in-dialog requests along that route set come back in, and both entries
    // are taken as this instance's own.
    phone
        .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKk")))
        .await;
    up.recv_method("ACK").await;
    phone
        .send(&phone.in_dialog("BYE", &ok, &call_id, 2, &unique("z9hG4bKb")))
        .await;
    let bye = up.recv_method("BYE").await;
    assert!(bye.all("route").is_empty(), "{:?}", bye.all("route"));
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
}
