"""The results store verified on read, sqlite errors as one line, atomic writes, the output-folder lock,
read-only media and markdown escaping (issue 12: Bad 1-3, Weak "misleading messages", "broken markdown")."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading

import pandas as pd
import pytest

from _hostile import assert_one_line_error, base_config, csv_hashes
from robustkit.defenses.sweep import _read_certificates
from robustkit.engine.transfer_grid import WORST, _cached_cell
from robustkit.outputs import LOCK_NAME, OutputLock

DB = "results.sqlite"


def _db(tiny) -> sqlite3.Connection:
    return sqlite3.connect(tiny.out / DB, isolation_level=None)


def _results(tiny) -> tuple[pd.DataFrame, pd.DataFrame]:
    board = pd.read_csv(tiny.out / "leaderboard.csv").drop(columns=["seconds"])
    return board, pd.read_csv(tiny.out / "per_sample.csv")


def _rerun_and_compare(tiny, cli, before) -> str:
    """Re-run the sweep: exit 0, and the same leaderboard (but for seconds) and per-sample table as before."""
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert code == 0, err
    board, per_sample = _results(tiny)
    pd.testing.assert_frame_equal(board, before[0])
    pd.testing.assert_frame_equal(per_sample, before[1])
    assert set(board["n_examples"]) == {24}
    return err


TAMPER = {
    # Issue 12, Bad 1: a finished batch with missing sample rows used to be trusted (n_examples 80 of 96)
    "delete-one-batch-rows": "DELETE FROM samples WHERE job_id = (SELECT job_id FROM batches ORDER BY id LIMIT 1) "
                             "AND idx < 8",
    "delete-one-row": "DELETE FROM samples WHERE idx = 5 AND job_id = (SELECT job_id FROM batches LIMIT 1)",
    "robust-but-clean-wrong": "UPDATE samples SET robust = 1, robust_after = '11' WHERE clean_correct = 0 AND idx < 8",
    "bits-too-short": "UPDATE samples SET robust_after = '1' WHERE idx = 3",
    "bits-not-binary": "UPDATE samples SET robust_after = '2x' WHERE idx = 4",
    "bits-not-cumulative": "UPDATE samples SET robust_after = '01', robust = 1, clean_correct = 1 WHERE idx = 6",
    "label-changed": "UPDATE samples SET label = (label + 1) % 10 WHERE idx = 7",
    "batch-range-moved": "UPDATE batches SET start = start + 1 WHERE batch_index = 1",
    "extra-orphan-row": "INSERT INTO samples SELECT job_id, idx + 1000, label, clean_pred, clean_correct, robust_after, "
                        "robust, broken_by, broken_at_eps, adv_pred, adv_norm, attacked FROM samples WHERE idx = 0",
    "larger-eps-more-robust": "UPDATE samples SET robust = 1, robust_after = '11', clean_correct = 1, "
                              "clean_pred = label WHERE idx = 9 AND job_id = (SELECT job_id FROM jobs "
                              "ORDER BY eps DESC LIMIT 1)",
    "dropped-samples-table": "DROP TABLE samples",
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_store_is_verified_and_recomputed(tiny, cli, case):
    before = _results(tiny)
    with _db(tiny) as con:
        con.execute(TAMPER[case])
    err = _rerun_and_compare(tiny, cli, before)
    assert "failed verification" in err or case == "extra-orphan-row"


def test_corrupt_page_is_one_line_and_advises_fresh(tiny, cli):
    before = csv_hashes(tiny.out)
    data = bytearray((tiny.out / DB).read_bytes())
    for offset in range(4096, len(data), 4096):  # every page after the header page
        data[offset + 8: offset + 64] = b"\xa5" * 56
    (tiny.out / DB).write_bytes(bytes(data))
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert_one_line_error(code, err, DB, "--fresh")
    assert csv_hashes(tiny.out) == before


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b""])
def test_garbage_store_file(tiny, cli, content):
    before = csv_hashes(tiny.out)
    (tiny.out / DB).write_bytes(content)
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    if content:
        assert_one_line_error(code, err, DB)
        assert csv_hashes(tiny.out) == before
    else:  # an empty file is an empty database: the run starts over and gets the same numbers
        assert code == 0, err


def test_integrity_error_while_storing_is_one_line(tiny, cli):
    """A store whose constraints reject the recomputed batch (here a planted trigger): one line, exit 2."""
    with _db(tiny) as con:
        con.execute("DELETE FROM samples WHERE idx < 8")  # forces a recomputation ...
        con.execute("CREATE TRIGGER no_inserts BEFORE INSERT ON samples BEGIN SELECT RAISE(ABORT, 'planted'); END")
    before = csv_hashes(tiny.out)
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    notes = [line for line in err.splitlines() if line.startswith("results store: recomputing")]
    assert len(notes) == 2  # ... announced first (one notice per job), then the failure is one error line
    assert_one_line_error(code, "\n".join(line for line in err.splitlines() if line not in notes), DB,
                          "inconsistent", "planted")
    assert csv_hashes(tiny.out) == before


def test_dropped_batches_table_recomputes_everything(tiny, cli):
    before = _results(tiny)
    with _db(tiny) as con:
        con.execute("DROP TABLE batches")
    err = _rerun_and_compare(tiny, cli, before)
    assert "(6 batches computed, 0 reused)" in err


def test_schema_version_from_the_future(tiny, cli, unchanged):
    with _db(tiny) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert_one_line_error(code, err, DB, "schema version 99")


def test_job_batch_size_zero(tiny, cli, unchanged):
    with _db(tiny) as con:
        con.execute("UPDATE jobs SET batch_size = 0")
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert_one_line_error(code, err, DB, "batch size 0")


def test_report_on_a_damaged_store_is_one_line(tiny, cli):
    (tiny.out / DB).write_bytes(b"garbage" * 1000)
    code, _, err = cli("report", tiny.out)
    assert_one_line_error(code, err, DB)


# ------------------------------------------------------------------------------------------- atomic writes
def test_symlink_at_the_old_tmp_name_is_not_followed(tiny, cli):
    """Issue 12, Bad 2: a symlink at OUT/leaderboard.csv.tmp made the run overwrite its target."""
    victim = tiny.root / "victim.txt"
    victim.write_text("precious\n")
    for name in ("leaderboard.csv.tmp", "per_sample.csv.tmp", "leaderboard.md.tmp", "report.md.tmp"):
        os.symlink(victim, tiny.out / name)
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert code == 0, err
    assert victim.read_text() == "precious\n"


def test_symlink_at_the_output_name_is_replaced_not_followed(tiny, cli):
    victim = tiny.root / "victim.txt"
    victim.write_text("precious\n")
    (tiny.out / "leaderboard.csv").unlink()
    os.symlink(victim, tiny.out / "leaderboard.csv")
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert code == 0, err
    assert victim.read_text() == "precious\n"
    assert not (tiny.out / "leaderboard.csv").is_symlink()
    assert "robust_acc" in (tiny.out / "leaderboard.csv").read_text()


def test_no_temporary_files_are_left_behind(tiny, cli):
    code, _, _ = cli("eval", "--config", tiny.config, "-q")
    assert code == 0
    assert not [p.name for p in tiny.out.iterdir() if p.name.endswith(".tmp")]


def test_symlinked_lock_file_is_refused(tiny, cli, unchanged):
    victim = tiny.root / "victim.txt"
    victim.write_text("precious\n")
    lock = tiny.out / LOCK_NAME
    if lock.exists():
        lock.unlink()
    os.symlink(victim, lock)
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert_one_line_error(code, err, LOCK_NAME, "symlink")
    assert victim.read_text() == "precious\n"


# ----------------------------------------------------------------------------------------------- the lock
def test_second_run_on_a_locked_folder_fails_naming_the_holder(tiny, cli, unchanged):
    """Issue 12, Bad 3: two evals into one folder; the second fails with one line naming the holder."""
    other = base_config()
    other["threat_model"]["eps"] = [0.02]
    path = tiny.write_config(other)
    with OutputLock(tiny.out, command="robustkit eval --config first.yaml"):
        code, _, err = cli("eval", "--config", path, "-q")
    assert_one_line_error(code, err, "in use by", f"pid {os.getpid()}", "first.yaml", "--wait")


def test_lock_is_released_after_a_run_and_after_an_error(tiny, cli):
    code, _, _ = cli("eval", "--config", tiny.config, "-q")
    assert code == 0
    with OutputLock(tiny.out):  # not held by anyone any more
        pass


# ------------------------------------------------------------------------------------------ read-only media
@pytest.fixture
def read_only_out(tiny):
    """The finished run's folder on read-only media: a read-only bind mount where we may mount (root), else
    a folder without write permission (non-root)."""
    ro = tiny.root / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "--bind", str(tiny.out), str(ro)], capture_output=True).returncode == 0 and \
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode == 0
        if not ok:
            subprocess.run(["umount", str(ro)], capture_output=True)
            pytest.skip("running as root without permission to mount: cannot make read-only media")
        yield ro
        subprocess.run(["umount", str(ro)], check=True)
    else:
        ro.rmdir()
        shutil.copytree(tiny.out, ro)
        os.chmod(ro, 0o555)
        yield ro
        os.chmod(ro, 0o755)


def test_report_works_on_read_only_media(read_only_out, cli):
    """Issue 12: ``robustkit report`` could not read a run on read-only media."""
    code, out, err = cli("report", read_only_out)
    assert code == 0, err
    assert "robust_acc" in out and "mlp" in out


def test_eval_into_read_only_media_does_not_say_fresh(tiny, read_only_out, cli):
    """Issue 12: a read-only folder was reported as a broken database to delete with --fresh."""
    before = csv_hashes(read_only_out)
    code, _, err = cli("eval", "--config", tiny.config, "--out", read_only_out, "-q")
    line = assert_one_line_error(code, err, str(read_only_out), "not writable")
    assert "--fresh" not in line
    assert csv_hashes(read_only_out) == before


# --------------------------------------------------------------------------------------------- markdown
def test_names_and_labels_with_pipes_newlines_and_commas(tiny, cli):
    cfg = base_config()
    cfg["models"][0]["name"] = "evil|name,with\nnewline"
    cfg["attacks"] = [{"name": "fgsm", "label": "f|g,s"}, {"name": "pgd", "steps": 3, "label": "p, g|d"}]
    cfg["output"] = "md-out"
    code, out, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert code == 0, err
    md = (tiny.root / "md-out" / "leaderboard.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    header_cells = len(table[0].replace("\\|", "").split("|"))
    assert len(table) == 2 + 2  # header, rule, one row per eps
    assert all(len(line.replace("\\|", "").split("|")) == header_cells for line in table)
    assert "evil\\|name,with newline" in table[2]
    board = pd.read_csv(tiny.root / "md-out" / "leaderboard.csv")
    assert set(board["model"]) == {"evil|name,with\nnewline"}
    assert {"acc_f|g,s", "acc_p, g|d"} <= set(board.columns)
    assert out.splitlines()[0] == table[0]


def test_wait_flag_waits_for_the_holder_then_runs(tiny, cli):
    """``--wait``: the second run blocks until the first releases the folder, then runs normally."""
    lock = OutputLock(tiny.out, command="first run")
    lock.__enter__()
    timer = threading.Timer(1.0, lock.__exit__, args=(None, None, None))
    timer.start()
    try:
        code, _, err = cli("eval", "--config", tiny.config, "--wait", "-q")
    finally:
        timer.join()
    assert code == 0, err
    assert "(0 batches computed, 6 reused)" in err


# -------------------------------------------------------------------------------------------- shadowing
def test_user_card_shadowing_a_builtin_is_marked_in_zoo_list(tmp_path, cli):
    """Issue 12: a user card named like a built-in silently replaced it."""
    zoo = tmp_path / "myzoo"
    zoo.mkdir()
    (zoo / "mine.yaml").write_text("name: mnist-lenet5-clean\narch: lenet5\n")
    (zoo / "other.yaml").write_text("name: my-own-model\narch: lenet5\n")
    code, out, err = cli("zoo", "list", "--zoo", zoo)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "mnist-lenet5-clean" in line]
    assert len(rows) == 1 and "(shadows built-in mnist-lenet5-clean)" in rows[0]
    own = [line for line in out.splitlines() if "my-own-model" in line]
    assert len(own) == 1 and "shadows" not in own[0]


# ------------------------------------------------------------------------------------ caches verified on read
@pytest.mark.parametrize("content", ['{"not": "a list"}', "[]", "garbage{", '[{"surrogate": "worst case", '
                                     '"attack": "worst case", "n_examples": 24, "robust_count": 99}]', None])
def test_tampered_transfer_grid_cell_is_recomputed_not_trusted(tmp_path, content):
    path = tmp_path / "cell.json"
    good = [{"surrogate": "s", "attack": "pgd", "n_examples": 24, "robust_count": 20},
            {"surrogate": WORST, "attack": WORST, "n_examples": 24, "robust_count": 18}]
    path.write_text(json.dumps(good) if content is None else content)
    assert _cached_cell(path, 24) == (good if content is None else None)
    assert _cached_cell(path, 25) is None  # a cell of other examples


def test_tampered_certificate_cache_is_recomputed_not_trusted(tmp_path):
    ident = {"kind": "certified", "seed": 0}
    row = {"radius": 0.0, "n_examples": 4, "certified_count": 3, "certified_acc": 75.0, "abstained": 0}
    path = tmp_path / "certified.json"
    path.write_text(json.dumps({"identity": ident, "rows": [row], "seconds": 1.0}))
    assert _read_certificates(path, ident, 1) == ([row], 1.0)
    assert _read_certificates(path, {**ident, "seed": 1}, 1) is None  # someone else's certificates
    assert _read_certificates(path, ident, 2) is None                 # rows missing
    path.write_text('{"identity": {"kind": "certified", "seed": 0}, "rows": [{"radius": 0}], "seconds": 1}')
    assert _read_certificates(path, ident, 1) is None
    path.write_text("not json")
    assert _read_certificates(path, ident, 1) is None
