//! Writes `docs/compatibility.md` from the configs in `tests/compat/` (the e2e test
//! `compat::report_is_current` fails when it is stale).

fn main() -> anyhow::Result<()> {
    let corpus = sluice_tests::compat::corpus()?;
    let path = sluice_tests::compat::report_path();
    std::fs::write(&path, sluice_tests::compat::report(&corpus))?;
    eprintln!("wrote {} ({} configs)", path.display(), corpus.len());
    Ok(())
}
