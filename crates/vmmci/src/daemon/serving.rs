//! One turn of the daemon's loop: tick the agent (after a device failure,
//! redo the handshake first), feed chrony each sample, start the
//! after-step hooks, and write the status when something happened or a
//! sample interval passed. Failures are said once; none stops the loop.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use vmmci_actions::Hooks;
use vmmci_agent::{Agent, AgentError, DriftPoint, GuestClock, Power, Tick};
use vmmci_transport::RegisterIo;

use super::hook_watch::HookWatch;
use super::reporter::Reporter;
use crate::CliError;

/// The agent in service, with its views.
pub(super) struct Serving<B, C, P> {
    agent: Agent<B, C, P>,
    reporter: Reporter,
    hook_watch: HookWatch,
    /// The loop's monotonic origin: the agent's `now` is measured from it.
    start: Instant,
    last_report: Duration,
    /// The device's last failure, as logged.
    last_error: Option<String>,
}

impl<B: RegisterIo, C: GuestClock, P: Power> Serving<B, C, P> {
    /// Handshake and the first status.
    pub(super) fn start(
        mut agent: Agent<B, C, P>,
        mut reporter: Reporter,
        hooks: &Hooks,
    ) -> Result<Self, CliError> {
        let hook_watch = HookWatch::new(hooks);
        agent.handshake()?;
        reporter.write(&agent);
        Ok(Serving {
            agent,
            reporter,
            hook_watch,
            start: Instant::now(),
            last_report: Duration::ZERO,
            last_error: None,
        })
    }

    pub(super) fn reload(&mut self, reload: &mut impl FnMut(&mut Agent<B, C, P>, &mut Reporter)) {
        reload(&mut self.agent, &mut self.reporter);
        self.reporter.write(&self.agent);
    }

    /// One tick now; returns when the next is due.
    pub(super) fn tick(&mut self) -> Instant {
        let now = self.start.elapsed();
        let report_due =
            now.saturating_sub(self.last_report) >= self.agent.config().sample_interval;
        match self.tick_device(now) {
            Ok(tick) => self.ticked(&tick, now, report_due),
            Err(e) => self.failed(&e),
        }
        self.start + self.agent.next_deadline(now)
    }

    /// After a failure the device may be a new one (unplugged and back,
    /// decode toggled): handshake again before going on, so vmd sees
    /// DRIVER_OK and does not refuse the next stop.
    fn tick_device(&mut self, now: Duration) -> Result<Tick, AgentError> {
        if self.last_error.is_some() {
            self.agent.handshake()?;
        }
        self.agent.tick(now)
    }

    fn ticked(&mut self, tick: &Tick, now: Duration, report_due: bool) {
        if self.last_error.take().is_some() {
            info!("device answers again; handshake redone");
            self.reporter.info.last_error = None;
        }
        if let Some(point) = &tick.sampled {
            self.feed(point);
        }
        // After-step hooks in a thread; a hook run that ended is news.
        self.hook_watch.after_tick(&self.agent, tick);
        let hook_news = self.hook_watch.news();
        if is_news(tick) || report_due || hook_news {
            self.reporter.write(&self.agent);
            self.last_report = now;
        }
    }

    /// A sample to chrony; while chronyd listens, it has the clock.
    fn feed(&mut self, point: &DriftPoint) {
        self.reporter.feed(point);
        self.agent.set_fed_daemon(self.reporter.fed_daemon());
        self.agent
            .set_fed_sample_interval(self.reporter.fed_sample_interval());
    }

    /// Log a failure once, not every poll, and keep trying.
    fn failed(&mut self, e: &AgentError) {
        let text = e.to_string();
        if self.last_error.as_deref() != Some(&text) {
            error!("{text}");
            self.reporter.info.last_error = Some(text.clone());
            self.reporter.write(&self.agent);
        }
        self.last_error = Some(text);
    }

    /// Leave the device as the next agent should find it, and say so.
    pub(super) fn exit(mut self, release_on_exit: bool) {
        if release_on_exit {
            info!("stopping: writing device status 0 (release_on_exit)");
            if let Err(e) = self.agent.release() {
                warn!("could not release the device: {e}");
            }
        } else {
            info!("stopping: DRIVER_OK stays set; the next agent acknowledges a stop posted meanwhile");
            self.agent.exit();
        }
        self.reporter.write(&self.agent);
    }
}

/// Whether the tick did something the status shows.
fn is_news(tick: &Tick) -> bool {
    tick.handled.is_some()
        || tick.sampled.is_some()
        || tick.retried.is_some()
        || tick.synced.is_some()
        || tick.forced.is_some()
}
