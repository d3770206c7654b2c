"""What a benchmark records of the code it ran: the source digest names the files themselves, so it
holds where git's commit does not (a copy of a working tree, an installed wheel)."""

import moekit
from moekit.bench.provenance import describe_environment, source_digest


def _package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_source_digest_follows_sources_and_tables_only(tmp_path):
    files = {"a.py": "x = 1\n", "sub/b.py": "y = 2\n", "configs/t.json": "{}\n"}
    first = source_digest(_package(tmp_path / "one", files))
    assert len(first) == 12 and int(first, 16) >= 0
    assert source_digest(_package(tmp_path / "two", files)) == first  # same files elsewhere: same digest
    assert source_digest(_package(tmp_path / "three", {**files, "notes.txt": "ignored", "c.pyc": "ignored"})) == first
    changes = ({**files, "a.py": "x = 2\n"}, {**files, "configs/t.json": "{ }\n"},  # a source, a table
               {"a.py": "x = 1\n", "sub/c.py": "y = 2\n", "configs/t.json": "{}\n"})  # a file renamed
    for i, changed in enumerate(changes):
        assert source_digest(_package(tmp_path / f"changed{i}", changed)) != first


def test_bench_environment_records_the_installed_source():
    env = describe_environment(None)
    assert env["moekit_source"] == source_digest() and env["moekit"] == moekit.__version__
