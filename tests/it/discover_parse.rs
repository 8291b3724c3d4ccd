//! Property test for everything discovery reads off the network (issue 6): random bytes and
//! mutated real records into the parsers never panic, and what comes out is bounded and safe to
//! print. A small deterministic generator (xorshift) stands in for proptest: same seed, same
//! cases, so a failure reproduces; set `DTS_FUZZ_SEED`/`DTS_FUZZ_CASES` to explore further.

use std::net::IpAddr;
use std::time::Instant;

use dts::discover::dns;
use dts::discover::fleet::Fleet;
use dts::discover::parse::{self, MAX_TEXT};
use dts::discover::udp::{Answer, Ping};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Real-looking inputs to mutate.
const SEEDS: &[&[u8]] = &[
    b"\x15{\"type\": \"duckiebot\"}",
    b" {\"configuration\": \"DB21J\", \"x\": [1, 2, {\"y\": null}]}",
    b"\x00",
    b"{\"version\": \"0.1.0\", \"arch\": \"amd64\", \"ssh_port\": 22, \"host_key_fingerprint\": \"SHA256:abc\"}",
    b"{\"version\": \"1\", \"name\": \"bot\", \"type\": \"duckiebot\", \"configuration\": \"DB21J\", \"hardware\": \"physical\"}",
    b"{\"version\": \"dts-agent/1\", \"name\": \"bot\", \"status\": \"ready\", \"agent\": {\"ssh_port\": \"22\"}}",
    b"{\"version\": \"1\", \"port\": 40000}",
];

const NAME_PARTS: &[&str] = &[
    "DT",
    "::",
    "PRESENCE",
    "BOOTING",
    "ROBOT_TYPE",
    "bot",
    "b\u{1b}[2J",
    "ø",
    ".",
    "_duckietown",
    "._duckietown._tcp.local.",
    "local",
    " ",
    "-",
    "\u{202e}",
    "AGENT",
    "",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.below(6) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let extra = rng.bytes(8);
                v.splice(i..i, extra);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, *rng.pick(&b"{}[]\":,\\\x00\xff "[..]));
            }
            _ => v = v.repeat(1 + rng.below(3)),
        }
    }
    v
}

/// A response packet with a mix of real and random records around `txt`.
fn packet(rng: &mut Rng, name: &str, txt: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0x84, 0, 0, 0, 0, 2, 0, 0, 0, 1];
    let name_at = p.len();
    for label in name.trim_end_matches('.').split('.') {
        let l = &label.as_bytes()[..label.len().min(63)];
        p.push(l.len() as u8);
        p.extend_from_slice(l);
    }
    p.push(0);
    p.extend_from_slice(&[0, 16, 0x80, 1, 0, 0, 0x11, 0x94]);
    let txt = &txt[..txt.len().min(60000)];
    p.extend_from_slice(&(txt.len() as u16).to_be_bytes());
    p.extend_from_slice(txt);
    // A second TXT with a compressed name, and an A record.
    p.extend_from_slice(&[0xC0, name_at as u8, 0, 16, 0, 1, 0, 0, 0, 0]);
    p.extend_from_slice(&[0, 1, 0]);
    p.extend_from_slice(&[
        0xC0,
        name_at as u8,
        0,
        1,
        0,
        1,
        0,
        0,
        0,
        120,
        0,
        4,
        10,
        0,
        0,
        2,
    ]);
    if rng.below(2) == 0 {
        mutate(rng, &p)
    } else {
        p
    }
}

fn random_name(rng: &mut Rng) -> String {
    if rng.below(4) == 0 {
        return String::from_utf8_lossy(&rng.bytes(80)).into_owned();
    }
    let mut s = String::new();
    for _ in 0..rng.below(8) {
        let part: &&str = rng.pick(NAME_PARTS);
        s.push_str(part);
    }
    s
}

fn check_text(s: &Option<String>) {
    if let Some(s) = s {
        assert!(!s.is_empty() && s.chars().count() <= MAX_TEXT, "{s:?}");
        assert!(!s.chars().any(char::is_control), "{s:?}");
    }
}

#[test]
fn random_input_never_panics_and_stays_printable() {
    let seed: u64 = std::env::var("DTS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_d0c7_1e70_2026);
    let cases: usize = std::env::var("DTS_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut rng = Rng(seed | 1);
    let mut fleet = Fleet::new();
    let now = Instant::now();
    let addrs: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fe80::1".parse().unwrap()];
    for case in 0..cases {
        let input = match rng.below(3) {
            0 => rng.bytes(300),
            1 => mutate(&mut rng, rng_pick_seed(case)),
            _ => {
                let mut giant = vec![b' '];
                giant.extend(std::iter::repeat_n(b'[', rng.below(20_000)));
                giant
            }
        };
        let name = random_name(&mut rng);

        let _ = parse::parse_instance(&name);
        if let Some(obj) = parse::parse_txt(&input) {
            for key in [
                "type",
                "configuration",
                "version",
                "arch",
                "host_key_fingerprint",
            ] {
                check_text(&parse::text_field(&obj, key));
            }
        }
        let _ = Ping::parse(&input);
        match Answer::parse(&input) {
            Some(Answer::Pong(p)) => {
                check_text(&Some(p.name.clone()));
                check_text(&p.robot_type);
                if let Some(h) = p.hostname() {
                    assert!(parse::is_host_label(&h));
                }
                fleet.pong(addrs[0], p, now);
            }
            Some(Answer::Agent(a)) => {
                check_text(&a.agent.version);
                fleet.agent_pong(addrs[0], a, now);
            }
            None => {}
        }
        let full = format!("{name}._duckietown._tcp.local.");
        for r in dns::txt_records(&packet(&mut rng, &full, &input)) {
            fleet.raw_txt(&r.name, r.ttl, r.rdata);
        }
        let _ = dns::txt_records(&input);
        fleet.resolved(&full, &addrs, input.clone());
        if rng.below(5) == 0 {
            fleet.removed(&full, Instant::now());
        }
        if case % 1000 == 0 {
            for r in fleet.robots() {
                assert!(parse::is_host_label(&r.hostname), "{:?}", r.hostname);
                check_text(&r.robot_type);
                check_text(&r.configuration);
                if let Some(a) = &r.agent {
                    check_text(&a.version);
                    check_text(&a.arch);
                    check_text(&a.host_key_fingerprint);
                }
                serde_json::to_string(&r).unwrap();
            }
        }
    }
}

fn rng_pick_seed(case: usize) -> &'static [u8] {
    SEEDS[case % SEEDS.len()]
}
