"""The README's main job until the book exists: the demo registers its pair and draws it."""

import subprocess
import sys


def test_demo_improves_dice_and_writes_picture(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deepsim_edu", "demo", "--steps", "80", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    line = next(s for s in result.stdout.splitlines() if "Dice before" in s)
    before, after = (float(w) for w in line.replace("→ after", "").split("before")[1].split())
    assert after > before + 0.03, line
    assert (tmp_path / "registration.png").stat().st_size > 10_000
