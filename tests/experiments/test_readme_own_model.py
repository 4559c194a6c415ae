"""The README's "your own model, your own data" example trains as written (on the shipped tiny text)."""

import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "data" / "tiny.txt"


def test_the_own_model_example_trains_and_reports_bits_per_token(tmp_path, capsys):
    (block,) = re.findall(r"```py\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    code = block.replace('"notes.txt"', repr(str(TINY))).replace('"/tmp/bigram"', repr(str(tmp_path / "bigram")))
    exec(compile(code, "README.md", "exec"), {})
    bits = float(capsys.readouterr().out.split()[-1])
    assert math.isfinite(bits) and bits < math.log2(100)  # below a uniform guess over the characters
    assert (tmp_path / "bigram" / "result.json").is_file()
