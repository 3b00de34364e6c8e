"""`mine` end to end against the replayed APIs: only micrograph figures give
particles, with DOI provenance and calibration; faults are survived; re-runs
resume; no key ever lands in the output folder."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

import pandas as pd
import pytest

FIX = Path(__file__).parent / "fixtures" / "publishers"
sys.path.insert(0, str(FIX))

from pubreplay import ELSEVIER_KEY, ELSEVIER_TOKEN, SPRINGER_KEY, ReplayServer  # noqa: E402

from imageextract.errors import BackendNotFoundError, ImageExtractError  # noqa: E402
from imageextract.mining import add_mine_parser, cmd_mine, literature_table, mine  # noqa: E402

FAST = {"http_options": {"rate_per_s": 1000.0, "backoff_s": 0.01}}
SECRETS = (ELSEVIER_KEY, ELSEVIER_TOKEN, SPRINGER_KEY, "replay-tests@example.org")
MICROGRAPH_FIGURES = {
    ("10.1016/j.replay.2024.100001", "Fig. 1"), ("10.1016/j.replay.2024.100002", "Fig. 1"),
    ("10.3390/nano.replay.0001", "Figure 1"), ("10.3390/nano.replay.0002", "Figure 1"),
    ("10.1186/s11671-024-00001-x", "Fig. 1"),
}


def _scale_bar_reader_available() -> bool:
    try:
        from imageextract.figures import read_scale_bar  # noqa: F401
        from imageextract.figures.ocr import available_engines
    except ImportError:
        return False
    return bool(available_engines())


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    base = tmp_path_factory.mktemp("mine")
    out = base / "out"
    doi_file = base / "dois.txt"
    doi_file.write_text("PMC9000001\n# a comment\n\nhttps://doi.org/10.3390/nano.replay.0002\n")
    with ReplayServer() as srv, pytest.MonkeyPatch.context() as mp:
        for k, v in srv.env().items():
            mp.setenv(k, v)
        srv.fail("gr1_lrg.jpg", "truncate")
        srv.fail("/content/article/doi/10.1016/j.replay.2024.100002", "429")
        srv.fail("PMC9000001/fullTextXML", "500")
        kw = dict(out_dir=out, progress=False, fetcher_options=FAST, report=False)
        runs = [mine(dois=["10.1016/j.replay.2024.100001", "10.1016/j.replay.2024.100002"],
                     source="elsevier", **kw),
                mine(doi_file=doi_file, source="europepmc", **kw),
                mine(query="silver", source="springer", **kw)]
        first_requests = list(srv.requests)
        with sqlite3.connect(out / "results.sqlite") as con:
            n_particles = con.execute("SELECT COUNT(*) FROM particles").fetchone()[0]
        rerun = mine(dois=["10.1016/j.replay.2024.100001", "10.1016/j.replay.2024.100002"],
                     source="elsevier", **{**kw, "report": True})
        rerun_requests = srv.requests[len(first_requests):]
        yield {"out": out, "runs": runs, "rerun": rerun, "requests": first_requests,
               "rerun_requests": rerun_requests, "n_particles": n_particles, "url": srv.url}


def test_counts_and_exit_codes(mined):
    els, epmc, spr = mined["runs"]
    assert [r.n_articles for r in mined["runs"]] == [2, 2, 1]
    assert [r.n_non_micrograph for r in mined["runs"]] == [3, 2, 1]
    assert all(r.n_failed == 0 and r.exit_code == 0 for r in mined["runs"])
    assert els.n_done >= 2 and epmc.n_done >= 2 and spr.n_done >= 1
    assert set(els.seconds) >= {"fetch", "images", "panels", "segment+measure", "total"}


def test_particles_only_from_micrograph_figures_with_provenance(mined):
    parts = pd.read_parquet(mined["out"] / "particles.parquet")
    assert len(parts) == mined["n_particles"] > 50
    assert set(zip(parts.doi, parts.figure)) == MICROGRAPH_FIGURES
    assert set(parts.source) == {"elsevier", "europepmc", "springer"}
    assert parts.path.str.startswith(mined["url"]).all()
    assert (parts.panel.astype(str).str.len() > 0).all()
    mics = pd.read_csv(mined["out"] / "micrographs.csv")
    assert set(mics.modality) == {"TEM", "SEM", "STEM"}
    with sqlite3.connect(mined["out"] / "results.sqlite") as con:
        docs = dict(con.execute("SELECT doi, license FROM documents").fetchall())
        figs = dict(con.execute("SELECT label || ' ' || document_id, material FROM figures").fetchall())
    assert docs["10.1016/j.replay.2024.100001"] == "http://creativecommons.org/licenses/by/4.0/"
    assert docs["10.3390/nano.replay.0002"] == "https://creativecommons.org/licenses/by-nc/4.0/"
    assert docs["10.1016/j.replay.2024.100002"] is None
    assert figs == {"Fig. 1 doi:10.1016/j.replay.2024.100001": "Au",
                    "Fig. 1 doi:10.1016/j.replay.2024.100002": "Fe3O4@SiO2",
                    "Figure 1 doi:10.3390/nano.replay.0001": "Pt",
                    "Figure 1 doi:10.3390/nano.replay.0002": "ZnO",
                    "Fig. 1 doi:10.1186/s11671-024-00001-x": "Ag"}


def test_particles_are_calibrated_from_scale_bars(mined):
    if not _scale_bar_reader_available():
        pytest.skip("no scale-bar reader / OCR engine installed: nm columns stay null")
    parts = pd.read_parquet(mined["out"] / "particles.parquet")
    assert (parts.calibration_source == "scalebar").all()
    assert parts.nm_per_px.between(1.2, 1.3).all()  # "100 nm" over an 80 px bar
    inner = parts[~parts.touches_border]
    # discs of radius 7-11 px → ECD 14-22 px → 17.5-27.5 nm
    assert 16 < inner.ecd_nm.median() < 29


def test_literature_view_answers_material_queries(mined):
    table = literature_table(mined["out"])
    au = table[table.material == "Au"]
    assert len(au) >= 1 and au.doi.eq("10.1016/j.replay.2024.100001").all()
    assert au.license.iloc[0] == "http://creativecommons.org/licenses/by/4.0/"
    assert au.d50.notna().all()
    per_particle = literature_table(mined["out"], level="particles")
    assert per_particle.material.notna().all()


def test_no_secret_anywhere_under_out(mined):
    files = [f for f in mined["out"].rglob("*") if f.is_file()]
    assert any("http-cache" in str(f) for f in files) and (mined["out"] / "report.html").is_file()
    for f in files:
        data = f.read_bytes()
        for s in SECRETS:
            assert s.encode() not in data, f"{s!r} found in {f}"
            assert s not in str(f)


def test_requests_sent(mined):
    reqs = mined["requests"]
    for r in reqs:
        if r["path"].startswith("/content/"):
            assert r["headers"]["X-ELS-APIKey"] == ELSEVIER_KEY
        if not r["path"].startswith("/openaccess/"):
            assert not any(s in r["raw_path"] for s in SECRETS), r["raw_path"]
    paths = [r["path"] for r in reqs]
    # faults were met and survived: 429 then 200, 500 then 200, truncated then a Range request
    assert paths.count("/content/article/doi/10.1016/j.replay.2024.100002") == 2
    assert paths.count("/europepmc/webservices/rest/PMC9000001/fullTextXML") == 2
    assert any("Range" in r["headers"] for r in reqs if r["path"].endswith("gr1_lrg.jpg"))
    # figures that are not micrographs are never downloaded
    assert not any(p.endswith(("-gr2.jpg", "-gr3.jpg", "g002.jpg", "Fig2_HTML.png")) for p in paths)


def test_rerun_resumes_without_duplicates_or_downloads(mined):
    r = mined["rerun"]
    els = mined["runs"][0]
    assert (r.n_done, r.n_failed) == (0, 0) and r.n_skipped == els.n_done
    assert mined["rerun_requests"] == []
    with sqlite3.connect(mined["out"] / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM particles").fetchone()[0] == mined["n_particles"]
        runs = con.execute("SELECT n_done, n_skipped, status FROM runs ORDER BY run_id").fetchall()
    assert runs[-1] == (0, els.n_done, "finished")


def test_failures_crossref_and_cli(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="imageextract")
    add_mine_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["mine", "--query", "x", "--doi", "y", "--source", "a", "--out", "o"])
    out = tmp_path / "out"
    with ReplayServer() as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        args = parser.parse_args(["mine", "--doi", "10.1016/j.replay.2024.100001", "--doi",
                                  "10.1016/j.replay.2024.999999", "--source", "crossref",
                                  "--out", str(out), "--nm-per-px", "2.0", "--max-articles", "2"])
        assert args.doi == ["10.1016/j.replay.2024.100001", "10.1016/j.replay.2024.999999"]
        assert cmd_mine(args, progress=False) == 1
        assert "1 failed" in capsys.readouterr().out
    with sqlite3.connect(out / "results.sqlite") as con:
        (item, stage, reason), = con.execute("SELECT item, stage, reason FROM failures").fetchall()
        sources = {r[0] for r in con.execute("SELECT DISTINCT source FROM particles")}
        cal = {r[0] for r in con.execute("SELECT DISTINCT calibration_source FROM particles")}
    assert item == "10.1016/j.replay.2024.999999" and stage == "fetch" and "404" in reason
    assert sources == {"crossref/elsevier"} and cal == {"manual"}


def test_bad_settings_are_usage_errors(tmp_path):
    with pytest.raises(ImageExtractError, match="exactly one of"):
        mine(source="elsevier", out_dir=tmp_path / "o")
    with pytest.raises(ImageExtractError, match="exactly one of"):
        mine(query="x", dois=["y"], source="elsevier", out_dir=tmp_path / "o")
    with pytest.raises(BackendNotFoundError, match="installed: crossref"):
        mine(dois=["10.1/x"], source="nosuch", out_dir=tmp_path / "o")
    with pytest.raises(ImageExtractError, match="holds no identifiers"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        mine(doi_file=tmp_path / "empty.txt", source="elsevier", out_dir=tmp_path / "o")


def test_local_source_mines_article_files(tmp_path):
    import shutil

    import pubfigures

    art = tmp_path / "articles"
    art.mkdir()
    shutil.copy(FIX / "europepmc/PMC9000002.xml", art / "zno.xml")
    (art / "nano-02-00002-g001.jpg").write_bytes(
        pubfigures.encode(pubfigures.micrograph(7), "JPEG"))
    res = mine(query=str(art), source="local", out_dir=tmp_path / "out", progress=False,
               nm_per_px=1.0, report=False)
    assert (res.n_done, res.n_non_micrograph, res.n_failed) == (1, 1, 0)
    parts = pd.read_parquet(tmp_path / "out" / "particles.parquet")
    assert set(parts.doi) == {"10.3390/nano.replay.0002"} and set(parts.source) == {"local"}
    assert parts.path.str.endswith("nano-02-00002-g001.jpg").all()


def test_literature_pipeline_file(tmp_path, monkeypatch):
    from imageextract.config import load_pipeline
    from imageextract.mining import mine_from_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_pipeline(root / "pipelines" / "literature.toml", [
        "input.source=springer", "input.query=''", "input.dois=['10.1186/s11671-024-00001-x']",
        f"output.dir={tmp_path / 'lit'}", "calibration.nm_per_px=1.5"])
    assert cfg["pipeline"]["kind"] == "mine"
    with ReplayServer() as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        res = mine_from_config(cfg, progress=False)
    assert (res.n_articles, res.n_done, res.n_failed) == (1, 1, 0)
    parts = pd.read_parquet(tmp_path / "lit" / "particles.parquet")
    assert set(parts.nm_per_px) == {1.5} and set(parts.doi) == {"10.1186/s11671-024-00001-x"}
