//! Watching on a terminal: a header line and one progress bar per item that runs or ran.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_proto::pb;

use super::View;
use super::lines::{session_counts, summary};
use crate::output::{emit, text, views};

const HEADER_TEMPLATE: &str = "{spinner} {msg}";
const ITEM_TEMPLATE: &str = "{prefix:24!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}";

/// Finished bars kept on screen; older ones turn into plain lines above the bars, so a job of
/// thousands of items does not draw thousands of bars.
const MAX_DONE_BARS: usize = 20;

/// What an item shows.
#[derive(Debug, Clone, Default)]
enum Slot {
    /// Nothing yet: pending.
    #[default]
    Empty,
    /// A live or finished bar.
    Bar(ProgressBar),
    /// Finished long ago: printed as a line and removed.
    Retired,
}

/// Live bars drawn on stdout.
pub struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    items: Vec<Slot>,
    done: VecDeque<usize>,
    style: ProgressStyle,
}

impl Bars {
    /// Bars with only the header shown.
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let header_style = ProgressStyle::with_template(HEADER_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let header = multi.add(ProgressBar::new_spinner().with_style(header_style));
        header.enable_steady_tick(Duration::from_millis(200));
        let style = ProgressStyle::with_template(ITEM_TEMPLATE)
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        Bars { multi, header, items: Vec::new(), done: VecDeque::new(), style }
    }

    /// Updates the bar of item `index`, creating it on first use.
    fn update(&mut self, index: usize, item: &pb::ItemStatus) {
        if self.items.len() <= index {
            self.items.resize(index + 1, Slot::Empty);
        }
        let bar = match &self.items[index] {
            Slot::Retired => return,
            Slot::Bar(bar) => bar.clone(),
            Slot::Empty => self.add_bar(index, &item.name),
        };
        bar.set_length(item.bytes_total);
        bar.set_position(item.bytes_done);
        bar.set_message(bar_message(item));
        if is_done(item) && !bar.is_finished() {
            bar.finish();
            self.done.push_back(index);
        }
    }

    fn add_bar(&mut self, index: usize, name: &str) -> ProgressBar {
        let styled =
            ProgressBar::new(0).with_style(self.style.clone()).with_prefix(name.to_string());
        let bar = self.multi.add(styled);
        self.items[index] = Slot::Bar(bar.clone());
        bar
    }

    /// Turns the oldest finished bars into lines while there are too many.
    fn retire_old_bars(&mut self) -> io::Result<()> {
        while self.done.len() > MAX_DONE_BARS {
            let Some(index) = self.done.pop_front() else { break };
            let slot = std::mem::replace(&mut self.items[index], Slot::Retired);
            if let Slot::Bar(bar) = slot {
                self.multi.remove(&bar);
                self.multi.println(format!("{} {}", bar.prefix(), bar.message()))?;
            }
        }
        Ok(())
    }

    /// The bars still on screen.
    fn bars(&self) -> impl Iterator<Item = &ProgressBar> {
        self.items.iter().filter_map(|slot| match slot {
            Slot::Bar(bar) => Some(bar),
            Slot::Empty | Slot::Retired => None,
        })
    }
}

impl View for Bars {
    fn show(&mut self, session: &pb::Session) -> io::Result<()> {
        self.header.set_message(header_line(session));
        for (index, item) in session.items.iter().enumerate() {
            if has_bar(item) {
                self.update(index, item);
            }
        }
        self.retire_old_bars()
    }

    fn note(&mut self, text: &str) -> io::Result<()> {
        self.multi.suspend(|| crate::error::say(text));
        Ok(())
    }

    fn finish(&mut self, session: &pb::Session) -> io::Result<()> {
        self.header.finish_with_message(header_line(session));
        for bar in self.bars() {
            bar.finish();
        }
        emit(&format!("\n{}", summary(session)))
    }
}

/// Whether an item reached a final state.
fn is_done(item: &pb::ItemStatus) -> bool {
    !matches!(item.state(), pb::ItemState::Pending | pb::ItemState::Processing)
}

/// Items get a bar once they process or are done; pending and never-processed ones do not.
fn has_bar(item: &pb::ItemStatus) -> bool {
    !matches!(item.state(), pb::ItemState::Pending | pb::ItemState::NotProcessed)
        || item.attempt > 1
}

/// `session 0193a1b2 (job nightly) WORKING: 1 SUCCESS, 1 PROCESSING, 1 PENDING`.
fn header_line(session: &pb::Session) -> String {
    format!(
        "session {} (job {}) {}: {}",
        session.id,
        session.job,
        text::session_state(session.state),
        session_counts(session)
    )
}

/// Phase and state, the agent, and a message or waiting reason if any.
fn bar_message(item: &pb::ItemStatus) -> String {
    let mut message = format!("{} {}", text::task_phase(item.phase), text::item_state(item.state));
    if !item.agent.is_empty() {
        message.push_str(&format!(" on {}", item.agent));
    }
    let note = views::message_or_waiting(item);
    if note != "-" {
        message.push_str(&format!(": {}", text::one_line(&note)));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn bars_for_running_and_done_items_only() {
        let session = fixtures::working_session();
        let with_bars: Vec<bool> = session.items.iter().map(has_bar).collect();
        assert_eq!(with_bars, [true, true, false]);
    }

    #[test]
    fn messages_show_phase_state_and_agent() {
        let session = fixtures::working_session();
        assert_eq!(bar_message(&session.items[1]), "TRANSFER PROCESSING on proxy-2");
        assert_eq!(
            header_line(&session),
            "session 0193a1b2 (job nightly) WORKING: 1 PENDING, 1 PROCESSING, 1 SUCCESS"
        );
    }

    #[test]
    fn bars_view_draws_nothing_when_hidden() {
        let mut bars = Bars::new();
        bars.multi.set_draw_target(ProgressDrawTarget::hidden());
        bars.show(&fixtures::working_session()).expect("show");
        let positions: Vec<u64> = bars.bars().map(ProgressBar::position).collect();
        assert_eq!(positions, [2048, 512]);
        assert_eq!(bars.done, [0]);
    }

    #[test]
    fn old_finished_bars_become_lines() {
        let mut bars = Bars::new();
        bars.multi.set_draw_target(ProgressDrawTarget::hidden());
        let mut session = fixtures::working_session();
        let done = session.items[0].clone();
        session.items = (0..MAX_DONE_BARS + 5)
            .map(|i| pb::ItemStatus { name: format!("vm-{i}"), ..done.clone() })
            .collect();
        bars.show(&session).expect("show");
        assert_eq!(bars.bars().count(), MAX_DONE_BARS);
        assert!(matches!(bars.items[0], Slot::Retired));
        bars.show(&session).expect("show again");
        assert_eq!(bars.bars().count(), MAX_DONE_BARS);
    }
}
