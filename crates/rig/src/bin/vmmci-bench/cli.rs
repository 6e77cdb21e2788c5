//! The command line: counts, parts, and where the results go.

/// Every part, in the order they run.
pub const PARTS: [&str; 6] = ["basic", "clock", "rates", "window", "load", "distro"];

pub struct Args {
    pub json: Option<String>,
    pub save: bool,
    pub short: bool,
    pub check: bool,
    pub stops: usize,
    pub resumes: usize,
    pub idle_secs: u64,
    pub kernel: String,
    pub clock_minutes: u64,
    /// Minutes of `discipline` at each host rate (0: no `rates` part).
    pub rates_minutes: u64,
    /// The host rates, ppm.
    pub rates_ppm: Vec<f64>,
    /// chronyd beside each rate's agent guest.
    pub rates_chrony: bool,
    /// Boots of each distro image for the boot window.
    pub window_boots: usize,
    /// Loaded `vmctl stop`s (one busybox boot each).
    pub load_stops: usize,
    /// `vmctl stop`s in the Debian 12 systemd image, the OpenRC image, and
    /// loaded ones through the systemd unit (one boot each).
    pub distro_stops: usize,
    pub openrc_stops: usize,
    pub distro_load_stops: usize,
    /// Parts to run (`basic`, `clock`, `rates`, `window`, `load`, `distro`); all when unset.
    pub only: Option<Vec<String>>,
}

const USAGE: &str = "usage: vmmci-bench [--json FILE] [--save] [--short] [--check] [--stops 20] [--resumes 10] \
[--idle-secs 60] [--kernel bookworm-cloud] [--clock-minutes 10] [--rates-minutes 10] \
[--rates-ppm 0,50,-200,2000,20000] [--no-rates-chrony] [--window-boots 2] [--load-stops 10] \
[--distro-stops 10] [--openrc-stops 3] [--distro-load-stops 3] [--only PART[,PART...]]
parts: basic (stops, resumes, idle), clock, rates, window, load, distro
--short: --stops 5 --resumes 3 --idle-secs 0 --load-stops 3 --rates-minutes 2 --rates-ppm 20000
  --no-rates-chrony --only basic,rates,load (later flags override)
--check: exit 1 when a figure misses its target (vmmci_rig::figures::checks)
results: a full run writes bench/results/<UTC date>-<short rev>.json; a run with --only or
--short only with --save; --json FILE writes FILE instead (and bench/results too with --save). Then: cargo run -p vmmci-rig --bin vmmci-figures";

impl Default for Args {
    fn default() -> Args {
        Args {
            json: None,
            save: false,
            short: false,
            check: false,
            stops: 20,
            resumes: 10,
            idle_secs: 60,
            kernel: "bookworm-cloud".into(),
            clock_minutes: 10,
            rates_minutes: 10,
            rates_ppm: vmmci_rig::clock_rates::RATES_PPM.to_vec(),
            rates_chrony: true,
            window_boots: 2,
            load_stops: 10,
            distro_stops: 10,
            openrc_stops: 3,
            distro_load_stops: 3,
            only: None,
        }
    }
}

impl Args {
    /// The parts that run: those asked for, less those with a count of 0.
    pub fn parts(&self) -> Vec<&'static str> {
        PARTS
            .iter()
            .copied()
            .filter(|p| self.only.as_ref().is_none_or(|o| o.iter().any(|x| x == p)))
            .filter(|&p| match p {
                "clock" => self.clock_minutes > 0,
                "rates" => self.rates_minutes > 0 && !self.rates_ppm.is_empty(),
                "window" => self.window_boots > 0,
                "load" => self.load_stops > 0,
                "distro" => self.distro_stops + self.openrc_stops + self.distro_load_stops > 0,
                _ => true,
            })
            .collect()
    }

    /// Whether the results go to `bench/results`: a full run's do, unless
    /// `--json` sends them elsewhere; other runs' only with `--save`.
    pub fn saves_to_results(&self) -> bool {
        self.save || (self.only.is_none() && !self.short && self.json.is_none())
    }

    /// What the `rates` part runs.
    pub fn rates_plan(&self) -> vmmci_rig::clock_rates::RatesPlan {
        vmmci_rig::clock_rates::RatesPlan {
            kernel: self.kernel.clone(),
            rates_ppm: self.rates_ppm.clone(),
            minutes: self.rates_minutes,
            chrony: self.rates_chrony,
            // Three rates (six VMs) at once at the most: the probe visits
            // each every 10 s.
            batch: if self.rates_chrony { 3 } else { 5 },
        }
    }

    /// `--short`'s counts and parts.
    fn short_run(&mut self) {
        self.short = true;
        self.stops = 5;
        self.resumes = 3;
        self.idle_secs = 0;
        self.load_stops = 3;
        self.rates_minutes = 2;
        self.rates_ppm = vec![20_000.0];
        self.rates_chrony = false;
        self.only = Some(vec!["basic".into(), "rates".into(), "load".into()]);
    }
}

/// The arguments, or what is wrong with them; `--help` prints the usage and
/// exits.
pub fn parse() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        macro_rules! num {
            ($field:ident) => {
                a.$field = value()?.parse().map_err(|e| format!("{flag}: {e}"))?
            };
        }
        match flag.as_str() {
            "--json" => a.json = Some(value()?),
            "--save" => a.save = true,
            "--check" => a.check = true,
            "--short" => a.short_run(),
            "--stops" => num!(stops),
            "--resumes" => num!(resumes),
            "--idle-secs" => num!(idle_secs),
            "--kernel" => a.kernel = value()?,
            "--clock-minutes" => num!(clock_minutes),
            "--rates-minutes" => num!(rates_minutes),
            "--rates-ppm" => {
                a.rates_ppm = value()?
                    .split(',')
                    .map(|x| x.parse::<f64>().map_err(|e| format!("{flag}: {x}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--no-rates-chrony" => a.rates_chrony = false,
            "--window-boots" => num!(window_boots),
            "--load-stops" => num!(load_stops),
            "--distro-stops" => num!(distro_stops),
            "--openrc-stops" => num!(openrc_stops),
            "--distro-load-stops" => num!(distro_load_stops),
            "--only" => a.only = Some(only(&value()?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// `--only`'s comma-separated parts, each one of [`PARTS`].
fn only(list: &str) -> Result<Vec<String>, String> {
    let v: Vec<String> = list.split(',').map(str::to_string).collect();
    if let Some(bad) = v.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!("--only: {bad} is not one of {}", PARTS.join(", ")));
    }
    Ok(v)
}
