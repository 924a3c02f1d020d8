"""Ray's copies into results_dir appear whole or not at all, even when the writer is SIGKILLed."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pyarrow.fs as pafs

from esam.search.stores.atomic_writes import PARTIAL, atomic_local_filesystem, sweep_partial_files


def test_a_copied_directory_arrives_whole_through_the_filesystem(tmp_path):
    src = tmp_path / "staging"
    (src / "trial").mkdir(parents=True)
    (src / "experiment_state-x.json").write_text('{"trial_data": []}')
    (src / "trial" / "weights.bin").write_bytes(os.urandom(3_000_000))
    fs = pickle.loads(pickle.dumps(atomic_local_filesystem()))  # as a trial receives it from Ray

    pafs.copy_files(str(src), str(tmp_path / "results"), destination_filesystem=fs, chunk_size=1 << 20)

    assert (tmp_path / "results/experiment_state-x.json").read_text() == '{"trial_data": []}'
    assert (tmp_path / "results/trial/weights.bin").read_bytes() == (src / "trial/weights.bin").read_bytes()
    assert not list(tmp_path.rglob(f"*{PARTIAL}*"))


def test_a_writer_killed_mid_file_leaves_the_previous_copy_and_a_partial_file_to_sweep(tmp_path):
    target = tmp_path / "experiment_state-x.json"
    target.write_text('{"old": "complete"}')
    writer = textwrap.dedent(f"""
        import os, signal
        from esam.search.stores.atomic_writes import atomic_local_filesystem
        out = atomic_local_filesystem().open_output_stream({str(target)!r})
        out.write(b'{{"new": "half')
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", writer], capture_output=True, check=False)

    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == '{"old": "complete"}'
    assert len(list(tmp_path.glob(f"*{PARTIAL}*"))) == 1
    assert sweep_partial_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_the_filesystem_reads_lists_and_removes_like_the_local_one(tmp_path):
    fs = atomic_local_filesystem()
    fs.create_dir(str(tmp_path / "a/b"))
    with fs.open_output_stream(str(tmp_path / "a/b/f.txt")) as out:
        out.write(b"text")
    with fs.open_input_stream(str(tmp_path / "a/b/f.txt")) as inp:
        assert inp.read() == b"text"
    listed = fs.get_file_info(pafs.FileSelector(str(tmp_path / "a"), recursive=True))
    assert sorted(os.path.basename(i.path) for i in listed) == ["b", "f.txt"]
    fs.delete_dir(str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
