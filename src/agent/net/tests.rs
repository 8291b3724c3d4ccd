use std::net::Ipv4Addr;

use super::*;

fn pm(s: &str) -> PortMapping {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn port_mappings_parse_the_docker_way() {
    let v4: IpAddr = "127.0.0.1".parse().unwrap();
    let v6: IpAddr = "::1".parse().unwrap();
    let table: &[(&str, PortMapping)] = &[
        (
            "8080:80",
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Proto::Tcp,
                host_ip: None,
            },
        ),
        (
            "53:5353/udp",
            PortMapping {
                host_port: 53,
                container_port: 5353,
                protocol: Proto::Udp,
                host_ip: None,
            },
        ),
        (
            "127.0.0.1:8080:80/tcp",
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Proto::Tcp,
                host_ip: Some(v4),
            },
        ),
        (
            "[::1]:9090:90/sctp",
            PortMapping {
                host_port: 9090,
                container_port: 90,
                protocol: Proto::Sctp,
                host_ip: Some(v6),
            },
        ),
    ];
    for (spec, want) in table {
        assert_eq!(&pm(spec), want, "{spec}");
        assert_eq!(&pm(&want.to_string()), want, "round trip of {spec}");
    }
}

#[test]
fn bad_port_mappings_say_why() {
    let table = [
        ("80", "host port is required"),
        ("0:80", "host port 0"),
        ("80:0", "container port 0"),
        ("8080:80/icmp", "unknown protocol `icmp`"),
        ("x:80", "host port `x`"),
        ("70000:80", "host port `70000`"),
        ("8000-8010:80-90", "ranges"),
        ("nope:1:2", "`nope` is not an IP address"),
        ("[::1:1:2", "without `]`"),
        (":80", "host port is missing"),
    ];
    for (spec, want) in table {
        let e = spec.parse::<PortMapping>().unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: {e}");
        assert!(e.contains(&format!("`{spec}`")), "{spec}: {e}");
    }
}

#[test]
fn subnets() {
    let s: Ipv4Subnet = "10.89.0.0/24".parse().unwrap();
    assert_eq!(s.gateway(), Ipv4Addr::new(10, 89, 0, 1));
    assert_eq!(s.to_string(), "10.89.0.0/24");
    for bad in [
        "10.89.0.1/24",
        "10.89.0.0",
        "10.89.0.0/31",
        "x/24",
        "10.0.0.0/7",
    ] {
        assert!(bad.parse::<Ipv4Subnet>().is_err(), "{bad}");
    }
}

#[test]
fn container_ids() {
    for ok in ["abc", "a.b-c_d", "0123456789abcdef"] {
        validate_id(ok).unwrap();
    }
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "a b",
        "-x",
        &"a".repeat(251),
    ] {
        assert!(validate_id(bad).is_err(), "{bad}");
    }
}

#[test]
fn plugin_stdin_follows_libcni() {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::new(dir.path()).unwrap();
    let config = net.conflist();
    let list: Vec<&Value> = plugins(&config).collect();
    let types: Vec<&str> = list.iter().map(|p| plugin_type(p)).collect();
    assert_eq!(types, ["bridge", "portmap", "firewall", "loopback"]);
    let prev = json!({"cniVersion": CNI_VERSION, "ips": []});
    let ports = [pm("8080:80")];
    let portmap = plugin_config(&config, list[1], Some(&prev), &ports);
    assert_eq!(portmap["name"], NETWORK_NAME);
    assert_eq!(portmap["cniVersion"], CNI_VERSION);
    assert_eq!(portmap["prevResult"], prev);
    assert_eq!(
        portmap["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    );
    let bridge = plugin_config(&config, list[0], None, &ports);
    assert!(bridge.get("prevResult").is_none());
    assert!(bridge.get("runtimeConfig").is_none());
    assert_eq!(bridge["ipam"]["dataDir"], json!(dir.path().join("ipam")));
}

#[test]
fn results_give_the_container_address() {
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "dtagent0", "mac": "aa:aa:aa:aa:aa:aa"},
            {"name": "veth1234", "mac": "bb:bb:bb:bb:bb:bb"},
            {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/proc/1/ns/net"}
        ],
        "ips": [{"address": "10.89.0.5/24", "gateway": "10.89.0.1", "interface": 2}]
    });
    let a = attachment_of("c", &result).unwrap();
    assert_eq!(a.ip, "10.89.0.5".parse::<IpAddr>().unwrap());
    assert_eq!(a.prefix_len, 24);
    assert_eq!(a.gateway, Some("10.89.0.1".parse().unwrap()));
    assert_eq!(a.interface, "eth0");
    assert_eq!(a.mac.as_deref(), Some("cc:cc:cc:cc:cc:cc"));
    let none = json!({"cniVersion": "1.0.0", "interfaces": [], "ips": []});
    assert!(matches!(
        attachment_of("c", &none),
        Err(NetError::NoAddress(_))
    ));
}

#[test]
fn missing_plugin_names_it_and_the_search_path() {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::new(dir.path())
        .unwrap()
        .with_plugin_dirs(vec![dir.path().join("a"), dir.path().join("b")]);
    let e = net.find_plugin("bridge").unwrap_err().to_string();
    assert!(e.contains("`bridge`"), "{e}");
    assert!(
        e.contains(&dir.path().join("a").display().to_string()),
        "{e}"
    );
    assert!(e.contains(PLUGIN_PATH_ENV), "{e}");
}

#[test]
fn plugin_dirs_from_the_environment() {
    let defaults = [PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")];
    assert_eq!(plugin_dirs_from(None), defaults);
    assert_eq!(plugin_dirs_from(Some("".into())), defaults);
    assert_eq!(
        plugin_dirs_from(Some("/a/cni::/b/cni".into())),
        [PathBuf::from("/a/cni"), PathBuf::from("/b/cni")]
    );
}

#[test]
fn plugin_errors_read_well() {
    let e = NetError::Plugin {
        plugin: "portmap".into(),
        command: "ADD",
        container: "c1".into(),
        code: 7,
        msg: "bad".into(),
        details: Some("more".into()),
    };
    assert_eq!(
        e.to_string(),
        "CNI plugin `portmap` ADD for container `c1` failed: bad: more (CNI error 7: invalid network config)"
    );
}
