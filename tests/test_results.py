"""The RESULTS.md table writer (mvq_kd.results)."""

import json

import pytest
import torch

from mvq_kd.results import BEGIN, END, main


def fake_exp(root, name, causal, wers, params=1_234_567, seconds=754.0):
    exp = root / name
    (exp / "greedy_search").mkdir(parents=True)
    (exp / "train-summary.json").write_text(
        json.dumps({"params": params, "epochs": 3, "train_seconds": seconds})
    )
    torch.save({"model_config": {"encoder": {"causal": causal}}}, exp / "epoch-3.pt")
    for part, wer in zip(("test-clean", "test-other"), wers):
        (exp / "greedy_search" / f"wer-summary-{part}-epoch-3-avg-1.txt").write_text(
            f"settings\tWER\nepoch-3-avg-1\t{wer:.2f}\n"
        )
    return exp


def test_rows_are_added_and_replaced(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Title\n\nintro\n\n{BEGIN}\n{END}\n\n## Notes\nkept\n")
    t = fake_exp(tmp_path, "teacher", False, (3.5, 10.25))
    s = fake_exp(tmp_path, "student", True, (9.0, 30.0), seconds=3900)
    common = ["--results", str(results), "--suffix", "epoch-3-avg-1"]
    main(
        common
        + [
            "--exp-dir",
            str(t),
            "--role",
            "teacher",
            "--method",
            "baseline",
            "--command",
            "./train.py --a 1",
        ]
    )
    main(
        common
        + [
            "--exp-dir",
            str(s),
            "--role",
            "student",
            "--method",
            "baseline",
            "--command",
            "./train.py --b 2",
        ]
    )
    text = results.read_text()
    assert text.startswith("# Title\n\nintro") and text.endswith("## Notes\nkept\n")
    assert (
        "| teacher | baseline | no | 1.23 | 3 | 13 min | 3.50 | 10.25 | "
        "`./train.py --a 1` | `teacher` |"
    ) in text
    assert "| student | baseline | yes | 1.23 | 3 | 1 h 05 min | 9.00 | 30.00 |" in text
    # Re-running replaces the experiment's row instead of adding one.
    (s / "greedy_search" / "wer-summary-test-other-epoch-3-avg-1.txt").write_text(
        "settings\tWER\nepoch-3-avg-1\t25.00\n"
    )
    main(
        common
        + [
            "--exp-dir",
            str(s),
            "--role",
            "student",
            "--method",
            "baseline",
            "--command",
            "./train.py --b 2",
        ]
    )
    text = results.read_text()
    assert text.count("`student` |") == 1 and "| 25.00 |" in text and "| 30.00 |" not in text


def test_a_replaced_row_keeps_its_place_and_another_command_is_warned(tmp_path, caplog):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"{BEGIN}\n{END}\n")
    exps = [fake_exp(tmp_path, n, False, (5.0, 9.0)) for n in ("a", "b")]
    common = ["--results", str(results), "--suffix", "epoch-3-avg-1", "--role", "student"]
    for exp in exps:
        main(common + ["--exp-dir", str(exp), "--method", "baseline", "--command", "./train.py"])

    def order():  # the exp column of each row
        return [line.split("`")[-2] for line in results.read_text().splitlines()[3:-1]]

    assert order() == ["a", "b"]
    with caplog.at_level("WARNING"):
        main(
            common + ["--exp-dir", str(exps[0]), "--method", "baseline", "--command", "./train.py"]
        )
    assert order() == ["a", "b"] and not caplog.records  # same command: replaced quietly
    with caplog.at_level("WARNING"):
        main(common + ["--exp-dir", str(exps[0]), "--method", "baseline", "--command", "./x.py"])
    assert order() == ["a", "b"] and "`./x.py`" in results.read_text()
    assert "replacing the row of `a`, trained by another command: `./train.py`" in caplog.text


def test_missing_inputs_are_explained(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("no table here\n")
    exp = fake_exp(tmp_path, "x", False, (1.0, 2.0))
    args = [
        "--results",
        str(results),
        "--exp-dir",
        str(exp),
        "--role",
        "teacher",
        "--method",
        "baseline",
        "--command",
        "c",
    ]
    with pytest.raises(FileNotFoundError, match="wer-summary-test-clean-epoch-9"):
        main(args + ["--suffix", "epoch-9-avg-1"])
    with pytest.raises(ValueError, match="no '<!-- results:begin -->'"):
        main(args + ["--suffix", "epoch-3-avg-1"])


def test_method_must_match_the_trained_distillation(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"{BEGIN}\n{END}\n")
    exp = fake_exp(tmp_path, "kd", True, (1.0, 2.0))
    summary = json.loads((exp / "train-summary.json").read_text())
    args = ["--results", str(results), "--exp-dir", str(exp), "--role", "student"]
    args += ["--suffix", "epoch-3-avg-1", "--command", "c", "--method"]
    (exp / "train-summary.json").write_text(json.dumps({**summary, "distillation": None}))
    with pytest.raises(ValueError, match="trained without distillation .* method 'MVQ-KD'"):
        main(args + ["MVQ-KD"])
    main(args + ["baseline"])
    main(args + ["baseline (seed 43)"])
    with pytest.raises(ValueError, match="trained without distillation"):
        main(args + ["baseline-like"])
    kd = {"codebook_loss_scale": 0.1}
    (exp / "train-summary.json").write_text(json.dumps({**summary, "distillation": kd}))
    with pytest.raises(ValueError, match="trained with distillation"):
        main(args + ["baseline"])
    with pytest.raises(ValueError, match="trained with distillation"):
        main(args + ["baseline (seed 43)"])
    main(args + ["MVQ-KD"])
    assert "| student | MVQ-KD | yes |" in results.read_text()
