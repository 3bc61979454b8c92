//! Tests of the lexical helpers, with the straightforward byte-at-a-time versions they
//! replaced as references (the fast scanners must agree with them on any input).

use proptest::prelude::*;

use super::*;

/// The byte-at-a-time list splitter the `memchr` scanner replaced.
fn split_list_ref(s: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if in_quote {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_quote = false;
            }
        } else {
            match b {
                b'"' => in_quote = true,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                b',' if !in_angle => {
                    out.push(trim_range(s, start..i));
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    out.push(trim_range(s, start..s.len()));
    out
}

fn find_unquoted_ref(s: &[u8], from: usize, needle: u8) -> Option<usize> {
    let mut in_quote = false;
    let mut in_angle = false;
    let mut i = from;
    while i < s.len() {
        let b = s[i];
        if in_quote {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_quote = false;
            }
        } else if b == b'"' {
            in_quote = true;
        } else if b == b'<' {
            in_angle = true;
        } else if b == b'>' {
            in_angle = false;
        } else if b == needle && !in_angle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The `Vec`-building parameter parser the iterator replaced.
fn parse_params_ref(s: &[u8], r: Range<usize>) -> Option<Vec<Param>> {
    let mut out = Vec::new();
    let r = trim_range(s, r);
    if r.is_empty() {
        return Some(out);
    }
    if s.get(r.start) != Some(&b';') {
        return None;
    }
    let body = r.start + 1..r.end;
    let mut start = body.start;
    loop {
        let end = find_unquoted_ref(s, start, b';')
            .filter(|&p| p < body.end)
            .unwrap_or(body.end);
        let piece = trim_range(s, start..end);
        let (name, value) = match find_byte(s, piece.clone(), b'=') {
            Some(eq) => (
                trim_range(s, piece.start..eq),
                Some(trim_range(s, eq + 1..piece.end)),
            ),
            None => (piece, None),
        };
        if !is_token(s.get(name.clone())?) {
            return None;
        }
        if let Some(v) = &value {
            if v.is_empty() {
                return None;
            }
        }
        out.push(Param { name, value });
        if end >= body.end {
            break;
        }
        start = end + 1;
    }
    Some(out)
}

fn is_token_char_ref(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

#[test]
fn classes_match_their_definitions() {
    for b in 0..=255u8 {
        assert_eq!(is_token_char(b), is_token_char_ref(b), "token {b}");
        assert_eq!(
            is_lws(b),
            matches!(b, b' ' | b'\t' | b'\r' | b'\n'),
            "lws {b}"
        );
        assert_eq!(
            is_host_char(b),
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'),
            "host {b}"
        );
        assert_eq!(
            is_v6_char(b),
            b.is_ascii_hexdigit() || b == b':' || b == b'.',
            "v6 {b}"
        );
        assert_eq!(
            is_scheme_char(b),
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'),
            "scheme {b}"
        );
        assert_eq!(
            is_not_uri_char(b),
            b <= b' ' || b == 0x7f || b == b'<' || b == b'>',
            "uri {b}"
        );
    }
}

#[test]
fn list_split_respects_quotes_and_angles() {
    let s = br#""a,b" <sip:x;p=1,2>, <sip:y> ,z"#;
    let parts: Vec<&[u8]> = split_list(s).into_iter().map(|r| &s[r]).collect();
    assert_eq!(
        parts,
        vec![&br#""a,b" <sip:x;p=1,2>"#[..], b"<sip:y>", b"z"]
    );
}

#[test]
fn list_edge_cases() {
    let cases: &[&[u8]] = &[
        b"",
        b",",
        b"a,,b",
        b" a ,\r\n b",
        br#""x\",y" , z"#,
        br#""unclosed, a"#,
        b"<sip:a,b, c",
        b"sip:a>,b",
        br#""\"#,
        b"SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1, SIP/2.0/TCP h",
    ];
    for s in cases {
        assert_eq!(
            split_list(s),
            split_list_ref(s),
            "{:?}",
            String::from_utf8_lossy(s)
        );
    }
    assert_eq!(split_list(b"a,,b"), vec![0..1, 2..2, 3..4]);
    assert_eq!(list(b"").count(), 1);
}

#[test]
fn params_parse_and_reject_empty() {
    let s = b";branch=z9hG4bK1 ; rport;received=1.2.3.4";
    let p = parse_params(s, 0..s.len()).unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(&s[p[1].name.clone()], b"rport");
    assert!(p[1].value.is_none());
    assert!(parse_params(b";;a", 0..3).is_none());
    assert!(parse_params(b";a=", 0..3).is_none());
    assert!(parse_params(b";a;", 0..3).is_none());
    assert!(parse_params(b"a", 0..1).is_none());
    assert_eq!(parse_params(b" \r\n ", 0..4), Some(Vec::new()));
}

#[test]
fn params_quoted_and_folded() {
    let s = b";a=\"x;y\\\";z\";b\r\n ;c=<sip:d;e>";
    let p = parse_params(s, 0..s.len()).unwrap();
    let names: Vec<&[u8]> = p.iter().map(|p| &s[p.name.clone()]).collect();
    assert_eq!(names, vec![&b"a"[..], b"b", b"c"]);
    assert_eq!(&s[p[0].value.clone().unwrap()], b"\"x;y\\\";z\"");
    assert_eq!(p, parse_params_ref(s, 0..s.len()).unwrap());
}

#[test]
fn param_value_finds_first_with_a_value() {
    let s = b";tag;TAG=2;tag=3";
    assert_eq!(
        param_value(s, 0..s.len(), b"tag").map(|r| &s[r]),
        Some(&b"2"[..])
    );
    assert_eq!(param_value(s, 0..s.len(), b"x"), None);
    let bad = b";tag=1;;";
    assert_eq!(param_value(bad, 0..bad.len(), b"tag"), None);
}

#[test]
fn numbers() {
    assert_eq!(
        parse_u32(b"4294967295", u64::from(u32::MAX)),
        Some(u32::MAX)
    );
    assert_eq!(parse_u32(b"4294967296", u64::from(u32::MAX)), None);
    assert_eq!(parse_u32(b"-1", 100), None);
    assert_eq!(parse_u32(b"", 100), None);
}

/// Bytes drawn mostly from the ones the scanners treat specially.
fn lexical() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'"'),
            Just(b'\\'),
            Just(b'<'),
            Just(b'>'),
            Just(b','),
            Just(b';'),
            Just(b'='),
            Just(b' '),
            Just(b'\r'),
            Just(b'\n'),
            Just(b'a'),
            Just(b'Z'),
            Just(b'1'),
            any::<u8>(),
        ],
        0..40,
    )
}

proptest! {
    #[test]
    fn list_agrees_with_reference(s in lexical()) {
        prop_assert_eq!(split_list(&s), split_list_ref(&s));
    }

    #[test]
    fn params_agree_with_reference(s in lexical(), a in 0usize..42, b in 0usize..42) {
        let r = a.min(b)..a.max(b);
        prop_assert_eq!(parse_params(&s, r.clone()), parse_params_ref(&s, r.clone()));
        let mut t = vec![b';'];
        t.extend_from_slice(&s);
        prop_assert_eq!(parse_params(&t, 0..t.len()), parse_params_ref(&t, 0..t.len()));
    }
}

fn trim_range_ref(s: &[u8], r: Range<usize>) -> Range<usize> {
    let mut start = r.start.min(s.len());
    let mut end = r.end.min(s.len()).max(start);
    while start < end && is_lws(s[start]) {
        start += 1;
    }
    while end > start && is_lws(s[end - 1]) {
        end -= 1;
    }
    start..end
}

proptest! {
    #[test]
    fn trim_agrees_with_reference(s in lexical(), a in 0usize..42, b in 0usize..42) {
        prop_assert_eq!(trim_range(&s, a..b), trim_range_ref(&s, a..b));
    }
}

#[test]
fn eq_lower_is_eq_ic_for_lower_case_names() {
    let names: [&[u8]; 6] = [b"content-length", b"via", b"branch", b"x-1_a.b", b"", b"to"];
    for l in names {
        for b in 0..=255u8 {
            for at in 0..l.len() {
                let mut s = l.to_vec();
                s[at] = b;
                assert_eq!(eq_lower(&s, l), eq_ic(&s, l), "{s:?} {l:?}");
            }
        }
        assert!(eq_lower(&l.to_ascii_uppercase(), l));
    }
    assert!(!eq_lower(b"vi", b"via"));
    assert!(!eq_lower(b"content\rlength", b"content-length"));
}

#[test]
fn ascii_str_is_from_utf8() {
    let cases: [&[u8]; 6] = [
        b"",
        b"127.0.0.1",
        b"z9hG4bK-\x7f",
        "h\u{e9}".as_bytes(),
        b"\xff",
        b"a\xc3",
    ];
    for s in cases {
        assert_eq!(ascii_str(s), std::str::from_utf8(s).ok(), "{s:?}");
    }
}

#[test]
fn the_uri_scan_agrees_with_the_class_table() {
    for b in 0..=255u8 {
        assert_eq!(has_not_uri_char(&[b]), is_not_uri_char(b), "byte {b}");
        assert_eq!(
            has_not_uri_char(&[b'a', b, b'z']),
            is_not_uri_char(b),
            "byte {b}"
        );
    }
    assert!(!has_not_uri_char(b""));
}
