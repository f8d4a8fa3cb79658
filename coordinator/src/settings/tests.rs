use super::*;

#[test]
fn the_example_configuration_is_secure() {
    let example = include_str!("../../../deploy/coordinator.toml");
    let settings: Settings = toml::from_str(example).expect("the example parses");
    assert!(matches!(settings.transport(), Ok(Transport::Tls(_))));
    let etcd = settings.etcd_tls().expect("etcd TLS flags").expect("etcd over TLS");
    assert!(etcd.identity.is_some(), "with a client certificate");
    assert!(settings.bootstrap_token_file.is_some());
    assert_eq!(settings.advertised_address(None), "https://192.0.2.10:7400");
}

/// A coordinator's id follows the agents' id rule, under `--insecure` too.
#[test]
fn the_id_follows_the_node_id_rule() {
    let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\ninsecure = true\n";
    let parse = |id: &str| toml::from_str::<Settings>(&format!("{base}id = {id:?}\n"));
    assert_eq!(parse("coord-1.a_b").expect("a valid id").id, "coord-1.a_b");
    for bad in ["", "a/b", "Coord-A"] {
        let error = parse(bad).map(drop).expect_err(bad).to_string();
        assert!(error.contains(&format!("{bad:?}: ")), "{bad}: {error}");
    }
}

#[test]
fn etcd_tls_flags_go_together() {
    let base = "etcd = \"https://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
    let settings = |extra: &str| -> Settings {
        toml::from_str(&format!("{base}{extra}")).expect("settings parse")
    };
    assert!(settings("").etcd_tls().expect("no etcd TLS").is_none());
    assert!(settings("etcd-ca = \"/ca\"\n").etcd_tls().expect("CA only").is_some());
    assert!(settings("etcd-cert = \"/c\"\netcd-key = \"/k\"\n").etcd_tls().is_err());
    assert!(settings("etcd-ca = \"/ca\"\netcd-cert = \"/c\"\n").etcd_tls().is_err());
    assert_eq!(settings("").advertised_address(None), "http://a:1");
}

#[test]
fn a_lease_ttl_shorter_than_an_etcd_election_is_warned_about() {
    let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
    let warning = |extra: &str| {
        let settings: Settings = toml::from_str(&format!("{base}{extra}")).expect("settings");
        settings.lease_ttl_warning()
    };
    let short = warning("lease-ttl = 3\n").expect("3 s is warned about");
    assert!(short.starts_with("--lease-ttl 3 s is below 5 s: an etcd leader election"), "{short}");
    assert_eq!(warning("lease-ttl = 5\n"), None);
    assert_eq!(warning(""), None, "the default");
}

const BASE: &str = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";

/// `BASE` with `extra` over it through the config layer, as flags would be: its error as
/// the operator is told it.
fn load(extra: &str) -> Result<Settings, String> {
    let mut table: toml::Table = BASE.parse().map_err(|e| format!("{e}"))?;
    table.extend(extra.parse::<toml::Table>().map_err(|e| format!("{e}"))?);
    sluice_proto::config::load(&table, None).map_err(|e| e.to_string())
}

#[test]
fn the_lease_ttl_and_the_prefix_are_checked() -> Result<(), String> {
    for (extra, says) in [
        ("lease-ttl = 0\n", "lease-ttl: must be 1 to 3600 seconds, not 0"),
        ("lease-ttl = 99999999999\n", "lease-ttl: must be 1 to 3600 seconds, not 99999999999"),
        ("prefix = \"\"\n", "prefix: must be a key path like /sluice"),
        ("prefix = \"/a b\"\n", "prefix: must be a key path"),
        ("prefix = \"/a\\n\"\n", "prefix: must be a key path"),
        (
            "prefix = \"sluice\"\n",
            "prefix: must be a key path like /sluice, without spaces, not \"sluice\"",
        ),
        ("prefix = \"/\"\n", "prefix: must be a key path"),
        ("session-history-per-job = 0\n", "session-history-per-job: must be at least 1"),
        ("session-history-days = 0\n", "session-history-days: must be at least 1"),
    ] {
        let error = load(extra).err().ok_or(format!("{extra} is accepted"))?;
        assert!(error.starts_with(&format!("invalid configuration: {says}")), "{extra}: {error}");
        assert!(!error.contains('\n'), "one line: {error:?}");
    }
    let fine = load("lease-ttl = 3\nprefix = \"/team-a/sluice/\"\n")?;
    assert_eq!((fine.lease_ttl, fine.prefix.as_str()), (3, "/team-a/sluice/"));
    Ok(())
}

/// Values past their range are refused naming the setting and the range; 0 is no
/// "never" for the answer timeout, while it turns compaction off.
#[test]
fn timeouts_and_intervals_have_ranges() -> Result<(), String> {
    for (extra, says) in [
        ("task-answer-timeout = 0\n", "task-answer-timeout: must be 1 to 604800 seconds, not 0"),
        ("task-answer-timeout = 604801\n", "task-answer-timeout: must be 1 to 604800 seconds"),
        ("etcd-compaction-interval = 604801\n", "etcd-compaction-interval: must be 0 to 604800"),
        ("worker-threads = 100000\n", "worker-threads: must be 1 to 1024 threads, not 100000"),
        ("worker-threads = 0\n", "worker-threads: must be 1 to 1024 threads, not 0"),
    ] {
        let error = load(extra).err().ok_or(format!("{extra} is accepted"))?;
        assert!(error.starts_with(&format!("invalid configuration: {says}")), "{extra}: {error}");
    }
    let fine = load("task-answer-timeout = 604800\netcd-compaction-interval = 0\n")?;
    assert_eq!(fine.task_answer_timeout(), Duration::from_secs(604_800));
    assert_eq!(fine.compaction_interval(), None);
    assert_eq!(load("worker-threads = 1024\n")?.worker_threads.map(NonZeroUsize::get), Some(1024));
    Ok(())
}

/// Each etcd endpoint and the advertised URL must be http(s)://host:port.
#[test]
fn endpoints_are_urls_with_a_host_and_port() -> Result<(), String> {
    let refused = [
        "etcd = \"ftp://127.0.0.1:2379\"\n",
        "etcd = \"notaurl\"\n",
        "etcd = \"http://127.0.0.1:2379,127.0.0.1:2380\"\n",
        "etcd = \"http://e\"\n",
        "etcd = \"\"\n",
        "advertise = \"not a url\"\n",
        "advertise = \"http://h:1/path\"\n",
    ];
    for extra in refused {
        let error = load(extra).err().ok_or(format!("{extra} is accepted"))?;
        let key = extra.split(' ').next().unwrap_or_default();
        assert!(error.starts_with(&format!("invalid configuration: {key}: must ")), "{error}");
    }
    let fine = load("etcd = \"http://a:2379, https://[::1]:2379\"\nadvertise = \"http://h:1\"\n")?;
    assert_eq!(fine.etcd, ["http://a:2379", "https://[::1]:2379"]);
    let https = load("advertise = \"https://h:1\"\n")?;
    let error = https.transport().err().ok_or("https:// is accepted under --insecure")?;
    assert!(error.to_string().starts_with("--advertise https://h:1 needs TLS"), "{error}");
    let http = load("advertise = \"http://h:1\"\n")?;
    assert!(http.transport().is_ok());
    Ok(())
}

#[test]
fn worker_threads_are_at_least_one() {
    let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
    let parse = |extra: &str| toml::from_str::<Settings>(&format!("{base}{extra}"));
    let one = parse("worker-threads = 1\n").expect("one thread");
    assert_eq!(
        one.runtime().expect("runtime").handle().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
    let two = parse("worker-threads = 2\n").expect("two threads");
    assert_eq!(
        two.runtime().expect("runtime").handle().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread
    );
    assert!(parse("").expect("default").worker_threads.is_none());
}

/// A limit of 0 would refuse every watch: it is a mistake, told at start.
#[test]
fn the_watch_stream_limit_is_at_least_one() {
    let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
    let parse = |extra: &str| toml::from_str::<Settings>(&format!("{base}{extra}"));
    let error = parse("max-watch-streams = 0\n").expect_err("0 is refused");
    assert!(error.to_string().contains("nonzero"), "{error}");
    assert_eq!(parse("").expect("default").max_watch_streams.get(), 512);
    assert_eq!(parse("max-watch-streams = 3\n").expect("3").max_watch_streams.get(), 3);
}
