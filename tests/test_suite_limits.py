"""The test suite's own guard: a test that hangs fails after the per-test time limit (pytest-timeout, set in
pyproject.toml) instead of holding CI until the job is killed with no report."""
import subprocess
import sys
import time

HANGING = "import time\n\ndef test_hangs():\n    time.sleep(120)\n"


def test_the_project_sets_a_time_limit_per_test(request):
    # getini raises for an option no installed plugin declares: this fails if pytest-timeout is missing
    limit = float(request.config.getini("timeout"))
    assert 60 <= limit <= 600  # the slowest test takes ~40 s on 2 cores; CI's whole budget is 10 minutes


def test_a_hanging_test_fails_at_the_limit(tmp_path):
    (tmp_path / "test_hang.py").write_text(HANGING)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=2",
                             str(tmp_path / "test_hang.py")], cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "Timeout" in result.stdout and time.monotonic() - start < 60
