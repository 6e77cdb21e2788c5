use super::*;
use vmmci_agent::ClockMode;

#[test]
fn empty_file_is_defaults() {
    let c = Config::parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.poll_interval, Duration::from_millis(250));
    assert_eq!(c.power.reboot, vec!["reboot"]);
}

#[test]
fn full_file() {
    let c = Config::parse(
        r#"
device = "0000:00:05.0"
poll_interval = "100ms"
sample_interval = "30s"
grace = "40s"
force_after = "100s"
release_on_exit = true
run_dir = "/tmp/vmmci"
debug = true

[power]
reboot = ["/sbin/openrc-shutdown", "-r", "now"]
poweroff = ["/sbin/openrc-shutdown", "-p", "now"]

[clock]
mode = "discipline"
step_threshold = "500ms"

[chrony]
socket = "/run/chrony.vmmci.sock"

[metrics]
textfile = "/var/lib/prometheus/node-exporter/vmmci.prom"
"#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.clock.mode, ClockMode::Discipline);
    assert_eq!(c.clock.step_threshold, Duration::from_millis(500));
    assert_eq!(
        c.chrony.socket.as_deref(),
        Some(Path::new("/run/chrony.vmmci.sock"))
    );
    assert!(c.metrics.textfile.is_some());
    assert_eq!(c.device.as_deref(), Some("0000:00:05.0"));
    assert_eq!(c.poll_interval, Duration::from_millis(100));
    assert_eq!(c.grace, Duration::from_secs(40));
    assert_eq!(c.force_after, Duration::from_secs(100));
    assert!(c.release_on_exit);
    assert_eq!(c.power.reboot, vec!["/sbin/openrc-shutdown", "-r", "now"]);
}

#[test]
fn bad_file_names_the_line_and_the_key() {
    let err = Config::parse("debug = true\npoll_intervall = \"1s\"\n").unwrap_err();
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("poll_intervall"), "{err}");
    let err = Config::parse("\n\npoll_interval = \"fast\"\n").unwrap_err();
    assert!(
        err.contains("line 3") && err.contains("poll_interval"),
        "{err}"
    );
    assert!(err.contains("use a number"), "{err}");
    let err = Config::parse("[power]\nreboot = \"reboot\"\n").unwrap_err();
    assert!(err.contains("line 2") && err.contains("reboot"), "{err}");
    let err = Config::parse("[clock]\nmode = \"slew\"\n").unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("discipline"),
        "{err}"
    );
}

/// Why `c` is refused.
fn refusal(c: &Config) -> String {
    c.validate().unwrap_err().to_string()
}

#[test]
fn values_that_would_break_vmd_deadlines_are_refused() {
    let slow = Config {
        poll_interval: Duration::from_secs(5),
        ..Config::default()
    };
    assert!(refusal(&slow).contains("3 s"));
    let long = Config {
        force_after: Duration::from_secs(200),
        ..Config::default()
    };
    assert!(refusal(&long).contains("120 s"));
    let late_sync = Config {
        grace: Duration::from_secs(111),
        ..Config::default()
    };
    let err = refusal(&late_sync);
    assert!(
        err.contains("grace") && err.contains("before the force"),
        "{err}"
    );
    let empty = Config {
        power: PowerConfig {
            reboot: vec![],
            ..PowerConfig::default()
        },
        ..Config::default()
    };
    assert!(refusal(&empty).contains("power.reboot"));
    let mut c = Config::default();
    c.clock.step_threshold = Duration::ZERO;
    assert!(refusal(&c).contains("step_threshold"));
    let mut c = Config::default();
    c.metrics.textfile = Some("/var/lib/node-exporter/vmmci.txt".into());
    assert!(refusal(&c).contains(".prom"));
    let mut c = Config::default();
    c.chrony.socket = Some("chrony.sock".into());
    assert!(refusal(&c).contains("absolute"));
}

#[test]
fn missing_file_defaults_only_when_not_named() {
    let missing = Path::new("/nonexistent/vmmci.toml");
    assert_eq!(Config::load(missing, false).unwrap(), Config::default());
    assert!(matches!(
        Config::load(missing, true),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn hooks_section() {
    let d = Config::default();
    assert_eq!(d.hooks.timeout, Duration::from_secs(5));
    assert_eq!(d.hooks.dir, Path::new("/etc/vmmci/hooks.d"));
    let s = d.hooks.settings();
    assert!(s.before_reboot.is_empty() && s.after_step.is_empty());
    assert_eq!(s.dir.as_deref(), Some(Path::new("/etc/vmmci/hooks.d")));

    let c = Config::parse(
        r#"
[hooks]
before_reboot = ["/usr/local/sbin/drain", "--fast"]
before_poweroff = ["logger", "powering off"]
after_step = ["/usr/local/sbin/note-step"]
timeout = "2s"
dir = "/srv/hooks"
"#,
    )
    .unwrap();
    c.validate().unwrap();
    let s = c.hooks.settings();
    assert_eq!(s.before_reboot, ["/usr/local/sbin/drain", "--fast"]);
    assert_eq!(s.before_poweroff, ["logger", "powering off"]);
    assert_eq!(s.after_step, ["/usr/local/sbin/note-step"]);
    assert_eq!(s.timeout, Duration::from_secs(2));
    assert_eq!(s.dir.as_deref(), Some(Path::new("/srv/hooks")));
    let off = Config::parse("[hooks]\ndir = \"\"\n").unwrap();
    off.validate().unwrap();
    assert_eq!(
        off.hooks.settings().dir,
        None,
        "\"\" turns the directories off"
    );

    let err = Config::parse("[hooks]\nbefore_reboot = \"/x\"\n").unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("before_reboot"),
        "{err}"
    );
    let err = Config::parse("[hooks]\nafter_stop = [\"/x\"]\n").unwrap_err();
    assert!(err.contains("after_stop"), "{err}");
}

#[test]
fn hook_limits_stay_well_inside_vmds_budgets() {
    let with = |f: &dyn Fn(&mut HooksConfig)| {
        let mut c = Config::default();
        f(&mut c.hooks);
        c.validate().map_err(|e| e.to_string())
    };
    assert!(with(&|h| h.timeout = Duration::from_secs(20)).is_ok());
    assert!(with(&|h| h.timeout = Duration::from_millis(100)).is_ok());
    let err = with(&|h| h.timeout = Duration::from_secs(21)).unwrap_err();
    assert!(
        err.contains("hooks.timeout") && err.contains("30 s"),
        "{err}"
    );
    let err = with(&|h| h.timeout = Duration::ZERO).unwrap_err();
    assert!(err.contains("hooks.timeout"), "{err}");
    let err = with(&|h| h.after_step = vec![String::new()]).unwrap_err();
    assert!(
        err.contains("hooks.after_step") && err.contains("left out"),
        "{err}"
    );
    let err = with(&|h| h.dir = "hooks.d".into()).unwrap_err();
    assert!(
        err.contains("hooks.dir") && err.contains("absolute"),
        "{err}"
    );
}
