//! `tandem init` writes a starter configuration and rubric that load as they are, and never
//! replaces an instructor's files unless told to.

use assert_cmd::Command;
use tandem::config::Config;

fn tandem(dir: &std::path::Path) -> Command {
    let mut cmd = Command::cargo_bin("tandem").unwrap();
    cmd.current_dir(dir);
    cmd
}

#[test]
fn init_writes_a_configuration_and_rubric_that_load() {
    let dir = tempfile::tempdir().unwrap();
    tandem(dir.path()).arg("init").assert().code(0);

    for folder in ["inbox", "outbox", "reports"] {
        assert!(dir.path().join(folder).is_dir(), "{folder}/ was not made");
    }
    let config = Config::load(&dir.path().join("tandem.toml")).unwrap();
    assert_eq!(config.backends.len(), 2);
    assert!(
        config
            .backends
            .iter()
            .all(|b| b.send_seed && b.structured_output)
    );
    assert!(config.rubric.criteria.len() >= 2);
    assert!(config.rubric.criteria.iter().all(|c| !c.levels.is_empty()));
    let g = &config.grading;
    assert_eq!((g.temperature, g.seed), (0.0, Some(42)));
    assert_eq!(g.disagreement_share, 0.3);
    assert!(!g.feedback_sees_code_analysis);
}

#[test]
fn init_keeps_existing_files_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tandem.toml"), "# mine\n").unwrap();

    let refused = tandem(dir.path()).arg("init").assert().code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(stderr.contains("tandem.toml already exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tandem.toml")).unwrap(),
        "# mine\n"
    );
    assert!(!dir.path().join("rubric.toml").exists());

    tandem(dir.path())
        .args(["init", "--force"])
        .assert()
        .code(0);
    assert!(Config::load(&dir.path().join("tandem.toml")).is_ok());
}
