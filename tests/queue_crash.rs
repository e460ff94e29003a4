//! The queue's guarantee under SIGKILL: 200 inputs are dropped into the inbox, some while
//! tandem runs; the real `tandem` binary is killed at 20 random moments and restarted each
//! time; at the end every input is in exactly one record, no temporary or half-written file is
//! left in the outbox, nothing is left claimed, and every original is kept byte for byte.
//!
//! The fake model servers run in this test process, so they outlive every killed tandem. The
//! kill moments come from a seeded generator; the seed is printed on failure, and
//! `TANDEM_CRASH_SEED` replays a run.

mod queue_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use queue_support::{Class, Servers, notebook, script, walk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem::record::{ResultRecord, Status};

const DEFAULT_SEED: u64 = 0x7A6E_2026_1204;
const INPUTS: usize = 200;
const KILLS: usize = 20;
/// Inputs in the inbox before the first start; the rest arrive during the rounds.
const DROPPED_FIRST: usize = 100;
/// Students in the one LMS zip among the inputs.
const ZIP_STUDENTS: usize = 5;

/// One input as dropped: its name in the inbox and what it holds.
#[derive(Debug, Clone)]
enum Input {
    File(String, Vec<u8>),
    Folder(String, Vec<(String, Vec<u8>)>),
}

impl Input {
    fn name(&self) -> &str {
        match self {
            Input::File(name, _) | Input::Folder(name, _) => name,
        }
    }

    /// Drops the input the way a careful producer does: written elsewhere, renamed in.
    fn drop_into(&self, class: &Class) {
        let staging = class.root().join(".staging").join(self.name());
        fs::create_dir_all(staging.parent().unwrap()).unwrap();
        match self {
            Input::File(_, bytes) => fs::write(&staging, bytes).unwrap(),
            Input::Folder(_, files) => {
                for (file, bytes) in files {
                    let path = staging.join(file);
                    fs::create_dir_all(path.parent().unwrap()).unwrap();
                    fs::write(path, bytes).unwrap();
                }
            }
        }
        let target = class.inbox().join(self.name());
        assert!(!target.exists(), "{} is already in the inbox", self.name());
        fs::rename(&staging, &target).unwrap();
    }

    /// Whether a kept original holds exactly what was dropped.
    fn matches(&self, kept: &Path) -> bool {
        match self {
            Input::File(_, bytes) => fs::read(kept).is_ok_and(|b| b == *bytes),
            Input::Folder(_, files) => {
                let found = walk(kept).len();
                found == files.len()
                    && files
                        .iter()
                        .all(|(file, bytes)| fs::read(kept.join(file)).is_ok_and(|b| b == *bytes))
            }
        }
    }
}

fn lms_zip() -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for n in 0..ZIP_STUDENTS {
        let name = format!("zipstudent{n}_{}_{}_analysis.py", 5000 + n, 9000 + n);
        writer
            .start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(script(7000 + n).as_bytes()).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// The 200 inputs: scripts, notebooks and Markdown under Canvas names, a few broken files, a
/// few folders, and one LMS zip.
fn inputs() -> Vec<Input> {
    (0..INPUTS)
        .map(|i| {
            let canvas = |ext: &str| format!("student{i:03}_{}_{}_work.{ext}", 1000 + i, 3000 + i);
            match i {
                50 => Input::File("class download.zip".into(), lms_zip()),
                _ if i % 50 == 17 => Input::Folder(
                    format!("group {i}"),
                    vec![
                        ("analysis.py".into(), script(i).into_bytes()),
                        (
                            "notes/summary.md".into(),
                            format!("# Group {i}\nDone.").into_bytes(),
                        ),
                    ],
                ),
                _ if i % 40 == 9 => Input::File(canvas("py"), Vec::new()),
                _ if i % 3 == 0 => Input::File(
                    canvas("ipynb"),
                    notebook(&format!("print({i})")).into_bytes(),
                ),
                _ if i % 3 == 1 => Input::File(canvas("py"), script(i).into_bytes()),
                _ => Input::File(
                    canvas("md"),
                    format!("# Answer {i}\nNorth leads.").into_bytes(),
                ),
            }
        })
        .collect()
}

/// Starts the real binary on the class.
fn start_tandem(class: &Class, round: usize) -> std::process::Child {
    let log = fs::File::create(class.root().join(format!("round-{round:02}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(&class.config_path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the tandem binary starts")
}

/// Where each input's record(s) must be: an original path suffix per input.
fn originals_by_input(records: &[ResultRecord]) -> BTreeMap<String, Vec<&ResultRecord>> {
    let mut found: BTreeMap<String, Vec<&ResultRecord>> = BTreeMap::new();
    for record in records {
        let original = record.submission.original.as_deref().unwrap_or("");
        let name = original.rsplit('/').next().unwrap_or("").to_string();
        found.entry(name).or_default().push(record);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_survives_twenty_kills_in_exactly_one_record() {
    let seed = std::env::var("TANDEM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // About 60 ms a call, four at a time per server: a class takes a few seconds to grade,
    // so most kills land in the middle of a batch.
    let servers = Servers::with_rate(300.0).await;
    let class = Class::new(&servers, "");
    let inputs = inputs();
    let (first, later) = inputs.split_at(DROPPED_FIRST);
    for input in first {
        input.drop_into(&class);
    }

    let mut moments = Vec::new();
    let mut killed_running = 0;
    let mut later = later.iter();
    let per_round = later.len().div_ceil(KILLS);
    for round in 0..KILLS {
        let mut child = start_tandem(&class, round);
        let kill_at = Duration::from_millis(rng.random_range(50..2500));
        // Some inputs arrive while tandem runs, at random moments before the kill.
        let mut drops: Vec<Duration> = (0..per_round)
            .map(|_| Duration::from_millis(rng.random_range(0..kill_at.as_millis() as u64)))
            .collect();
        drops.sort();
        let round_start = Instant::now();
        for at in drops {
            tokio::time::sleep(at.saturating_sub(round_start.elapsed())).await;
            if let Some(input) = later.next() {
                input.drop_into(&class);
            }
        }
        tokio::time::sleep(kill_at.saturating_sub(round_start.elapsed())).await;
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        child.kill().unwrap_or(()); // SIGKILL
        child.wait().unwrap();
        moments.push(kill_at.as_millis());
    }
    let context = format!("seed {seed} (TANDEM_CRASH_SEED), kill moments in ms: {moments:?}");
    assert!(later.next().is_none(), "every input was dropped; {context}");

    // Then runs that are left alone until the inbox and the state folder are empty.
    let mut finals = 0;
    loop {
        finals += 1;
        assert!(finals <= 5, "tandem never finished; {context}");
        let status = start_tandem(&class, KILLS + finals).wait().unwrap();
        assert!(
            matches!(status.code(), Some(0) | Some(3)),
            "tandem exited with {status}; {context}\n{}",
            fs::read_to_string(
                class
                    .root()
                    .join(format!("round-{:02}.log", KILLS + finals))
            )
            .unwrap_or_default()
        );
        if walk(&class.inbox()).is_empty() && class.claimed().is_empty() {
            break;
        }
    }

    let records = class.records();
    let by_input = originals_by_input(&records);
    let mut problems = Vec::new();
    for input in &inputs {
        let found = by_input.get(input.name()).map_or(&[][..], Vec::as_slice);
        let expected = if input.name().ends_with(".zip") {
            ZIP_STUDENTS
        } else {
            1
        };
        if found.len() != expected {
            problems.push(format!("{}: {} records", input.name(), found.len()));
            continue;
        }
        for record in found {
            if !input.matches(&class.original(record)) {
                problems.push(format!("{}: original not kept as dropped", input.name()));
            }
        }
    }
    if let Some(zip) = by_input.get("class download.zip") {
        let mut students: Vec<&str> = zip
            .iter()
            .filter_map(|r| r.submission.student.lms_id.as_deref())
            .collect();
        students.sort();
        students.dedup();
        if students.len() != ZIP_STUDENTS {
            problems.push(format!("zip students recorded: {students:?}"));
        }
    }
    let extra: Vec<&String> = by_input
        .keys()
        .filter(|name| !inputs.iter().any(|i| i.name() == name.as_str()))
        .collect();
    if !extra.is_empty() {
        problems.push(format!("records for inputs never dropped: {extra:?}"));
    }
    let stray = class.stray_outbox_files();
    if !stray.is_empty() {
        problems.push(format!("stray files in the outbox: {stray:?}"));
    }
    let leftovers: Vec<PathBuf> = walk(&class.state().join("unpacked"));
    if !leftovers.is_empty() {
        problems.push(format!("left unpacked: {leftovers:?}"));
    }
    for batch in queue_support::sorted_children(&class.outbox()) {
        let name = batch.file_name().unwrap().to_string_lossy().into_owned();
        if !class
            .root()
            .join("reports")
            .join(&name)
            .join("submissions.csv")
            .is_file()
        {
            problems.push(format!("batch {name} has no reports"));
        }
    }
    let failed = records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    let broken = inputs
        .iter()
        .filter(|i| matches!(i, Input::File(_, b) if b.is_empty()))
        .count();
    if failed != broken {
        problems.push(format!(
            "{failed} failed records for {broken} broken inputs"
        ));
    }
    eprintln!(
        "{INPUTS} inputs, {} records, {KILLS} kills ({killed_running} while tandem ran), \
         {finals} final runs, {} requests, {:.1} s; {context}",
        records.len(),
        servers.requests(),
        started.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "{context}\n{}", problems.join("\n"));
    assert!(
        killed_running >= KILLS / 2,
        "only {killed_running} kills hit a running tandem; {context}"
    );
}
