//! Progress display, the JSONL metrics file and the loss-curve image.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// One line of the metrics file (`metrics.jsonl`): a training window or an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// Training progress averaged over the steps since the previous record.
    Train {
        /// Optimizer steps completed.
        step: usize,
        /// Mean training loss over the window.
        loss: f64,
        /// Learning rate of the last step (the schedule's base rate).
        lr: f64,
        /// Global gradient norm before clipping at the last step, if clipping is on.
        grad_norm: Option<f64>,
        /// Input tokens per second over the window.
        tokens_per_s: f64,
        /// Seconds since the run started (resumed runs continue the count).
        elapsed_s: f64,
    },
    /// An evaluation on the validation data.
    Eval {
        /// Optimizer steps completed.
        step: usize,
        /// Mean loss per target (negative log-likelihood, no label smoothing).
        loss: f64,
        /// `exp(loss)`.
        perplexity: f64,
        /// Fraction of correct predictions, for tasks that count them.
        accuracy: Option<f64>,
    },
}

impl Record {
    /// The step the record was written at.
    pub fn step(&self) -> usize {
        match self {
            Record::Train { step, .. } | Record::Eval { step, .. } => *step,
        }
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// A progress bar when standard error is a terminal, plain lines otherwise (CI logs).
    #[default]
    Auto,
    /// Always a progress bar.
    Bar,
    /// Always plain lines, one per log interval.
    Lines,
    /// Nothing.
    Silent,
}

pub(crate) struct Logger {
    bar: Option<ProgressBar>,
    lines: bool,
    total_steps: usize,
    jsonl: Option<(PathBuf, BufWriter<File>)>,
}

impl Logger {
    pub(crate) fn new(
        progress: Progress,
        total_steps: usize,
        first_step: usize,
        jsonl: Option<PathBuf>,
        history: &[Record],
    ) -> Result<Self, TrainError> {
        let terminal = std::io::stderr().is_terminal();
        let (bar, lines) = match progress {
            Progress::Auto if terminal => (true, false),
            Progress::Auto | Progress::Lines => (false, true),
            Progress::Bar => (true, false),
            Progress::Silent => (false, false),
        };
        let bar = bar.then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_steps as u64),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps | {msg} | {elapsed_precise} < {eta_precise}",
                )
                .expect("a valid template"),
            );
            bar.set_position(first_step as u64);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        // The metrics file is rewritten from the history, so a resumed run does not repeat the
        // lines its interrupted predecessor wrote after its last checkpoint.
        let jsonl = match jsonl {
            Some(path) => {
                let io = |source| TrainError::Io {
                    path: path.clone(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut file = BufWriter::new(File::create(&path).map_err(io)?);
                for record in history {
                    writeln!(
                        file,
                        "{}",
                        serde_json::to_string(record).expect("serializes")
                    )
                    .map_err(io)?;
                }
                file.flush().map_err(io)?;
                Some((path, file))
            }
            None => None,
        };
        Ok(Self {
            bar,
            lines,
            total_steps,
            jsonl,
        })
    }

    pub(crate) fn record(&mut self, record: &Record) -> Result<(), TrainError> {
        let text = match record {
            Record::Train {
                step,
                loss,
                lr,
                tokens_per_s,
                elapsed_s,
                ..
            } => {
                let eta = if *step > 0 {
                    elapsed_s / *step as f64 * self.total_steps.saturating_sub(*step) as f64
                } else {
                    0.0
                };
                if let Some(bar) = &self.bar {
                    bar.set_position(*step as u64);
                    bar.set_message(format!(
                        "loss {loss:.4} | lr {lr:.2e} | {tokens_per_s:.0} tok/s"
                    ));
                }
                format!(
                    "step {step}/{} | loss {loss:.4} | lr {lr:.2e} | {tokens_per_s:.0} tok/s | eta {}",
                    self.total_steps,
                    clock(eta)
                )
            }
            Record::Eval {
                step,
                loss,
                perplexity,
                accuracy,
            } => {
                let accuracy = accuracy
                    .map(|a| format!(" | accuracy {:.2}%", 100.0 * a))
                    .unwrap_or_default();
                format!(
                    "eval at step {step} | loss {loss:.4} | perplexity {perplexity:.2}{accuracy}"
                )
            }
        };
        match (&self.bar, matches!(record, Record::Eval { .. })) {
            (Some(bar), true) => bar.println(text),
            (None, _) if self.lines => eprintln!("{text}"),
            _ => {}
        }
        if let Some((path, file)) = &mut self.jsonl {
            let io = |source| TrainError::Io {
                path: path.clone(),
                source,
            };
            writeln!(
                file,
                "{}",
                serde_json::to_string(record).expect("serializes")
            )
            .map_err(io)?;
            file.flush().map_err(io)?;
        }
        Ok(())
    }

    pub(crate) fn message(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.lines => eprintln!("{text}"),
            None => {}
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Draws the training loss and the evaluation loss of `history` against the step, as an SVG
/// image at `path`.
///
/// # Errors
/// [`TrainError::Plot`] if the image cannot be written.
pub fn plot_loss_curve(history: &[Record], path: impl AsRef<Path>) -> Result<(), TrainError> {
    let path = path.as_ref();
    let fail = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let train: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|r| match r {
            Record::Train { step, loss, .. } if loss.is_finite() => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let eval: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|r| match r {
            Record::Eval { step, loss, .. } if loss.is_finite() => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let points = || train.iter().chain(&eval);
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-3);
    let y_min = points()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .min(y_max * 0.99);

    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min * 0.95)..(y_max * 1.05))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(|e| fail(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), &RED))
            .map_err(|e| fail(&e))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
