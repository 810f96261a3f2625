"""The verification report as a picture (agent/release/report.py).

Unit tests check the numbers the report keeps (confusion matrices, error histograms) and how
they are drawn (changed cells highlighted, precision/recall). The browser test packages the
shipped demo model against labels with known errors (5 anomalies labelled... see below) with
``edge-convert package``, opens the HTML report it wrote in headless Chromium and reads the
confusion matrix as shown; the dashboard's releases page shows the same report for the
announced package.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, publish_once
from agent.fleet.rollout import announcement_from_package
from agent.model.loading import demo_model_bytes
from agent.model.runtime import load_model
from agent.release.manifest import (
    Confusion,
    Histogram,
    OutputMetrics,
    Targets,
    VariantMetrics,
    VerificationReport,
)
from agent.release.report import precision_recall, render_report, report_document
from converters.cli import main
from converters.verify import confusion_matrices, error_histogram
from tests.broker import Broker
from tests.browser import artefacts_dir, chromium, screenshot, wait_for
from tests.fleet.web.dashboard import DashboardProcess


def test_confusion_matrices_count_true_by_predicted() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2], np.int64)
    ref = np.array([0, 0, 1, 1, 2, 1], np.int64)
    cand = np.array([0, 1, 1, 1, 2, 1], np.int64)
    c = confusion_matrices(labels, ref, cand, 3)
    assert c is not None
    assert c.reference == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert c.candidate == [[1, 1, 0], [0, 2, 0], [0, 1, 1]]
    assert confusion_matrices(labels, ref, cand, 33) is None  # too many classes to keep
    assert confusion_matrices(np.array([0, 5]), ref[:2], cand[:2], 3) is None  # bad label


def test_error_histogram_bins_every_value() -> None:
    err = np.array([0.0, 0.0, 0.1, 0.2, 0.4], np.float64)
    h = error_histogram(err, bins=4)
    assert h.counts == [2, 1, 1, 1]
    assert h.edges[0] == 0.0 and h.edges[-1] == pytest.approx(0.4)
    assert error_histogram(np.zeros(3), bins=2).counts == [3, 0]


def test_precision_recall_per_class() -> None:
    assert precision_recall([[3, 1], [0, 2]]) == [(1.0, 0.75), (2 / 3, 1.0)]
    assert precision_recall([[0, 0], [0, 2]])[0] == (None, None)


def _report(confusion: Confusion) -> VerificationReport:
    return VerificationReport(
        samples=6,
        dataset="val.npz",
        labelled=True,
        variants=[
            VariantMetrics(
                name="reference", mode="float32", size=9000, latency_ms_p50=0.2, runtime="t"
            ),
            VariantMetrics(
                name="candidate", mode="int8", size=3000, latency_ms_p50=0.1, runtime="t"
            ),
        ],
        outputs=[
            OutputMetrics(
                name="scores",
                top1_agreement=5 / 6,
                reference_accuracy=1.0,
                accuracy=5 / 6,
                accuracy_drop=1 / 6,
                max_abs_error=0.3,
                mean_abs_error=0.05,
                confusion=confusion,
                error_histogram=Histogram(edges=[0.0, 0.15, 0.3], counts=[5, 1]),
            )
        ],
        passed=False,
        failures=["output scores: accuracy dropped by 0.1667"],
    )


def _cells(html: str, variant: str) -> dict[tuple[int, int], tuple[int, bool]]:
    table = html.split(f'data-variant="{variant}"', 1)[1].split("</table>", 1)[0]
    found = re.findall(
        r'<td( class="[^"]*")? data-true="(\d+)" data-pred="(\d+)">(\d+)</td>', table
    )
    return {(int(t), int(p)): (int(v), "changed" in cls) for cls, t, p, v in found}


def test_report_highlights_the_cells_that_changed() -> None:
    c = Confusion(classes=2, reference=[[3, 0], [0, 3]], candidate=[[2, 1], [0, 3]])
    html = render_report(_report(c), title="m 1.0.0", labels=["a", "b"])
    assert _cells(html, "reference") == {
        (0, 0): (3, True),
        (0, 1): (0, True),
        (1, 0): (0, False),
        (1, 1): (3, False),
    }
    assert _cells(html, "candidate")[(0, 1)] == (1, True)
    assert "FAILED" in html and "accuracy dropped" in html
    assert html.count("<svg") == 1 and "<rect" in html  # the error histogram
    assert "<th>a</th>" in html  # class names, not indices
    doc = report_document(html, "m <1.0.0>")
    assert doc.startswith("<!doctype html>") and "m &lt;1.0.0&gt;" in doc


def _shown_matrix(driver: WebDriver, variant: str) -> list[list[int]]:
    cells = driver.find_elements(By.CSS_SELECTOR, f'table.confusion[data-variant="{variant}"] td')
    n = int(len(cells) ** 0.5)
    got = [[0] * n for _ in range(n)]
    for td in cells:
        got[int(td.get_attribute("data-true") or -1)][int(td.get_attribute("data-pred") or -1)] = (
            int(td.text)
        )
    return got


@pytest.mark.slow
def test_html_report_shows_known_errors_in_the_browser(
    broker: Broker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The demo model's own predictions become the labels, except 5 'normal' predictions
    labelled 'anomaly' and 3 'anomaly' predictions labelled 'normal': the confusion matrix
    must show exactly those errors."""
    model_path = tmp_path / "demo.tflite"
    model_path.write_bytes(demo_model_bytes())
    model = load_model(demo_model_bytes())
    x = (np.random.default_rng(0).standard_normal((120, 32, 3)) * 3).astype(np.float32)
    predicted = np.array([int(np.argmax(model.run([x[i : i + 1]])[0])) for i in range(len(x))])
    labels = predicted.copy()
    labels[np.flatnonzero(predicted == 0)[:5]] = 1
    labels[np.flatnonzero(predicted == 1)[:3]] = 0
    n0, n1 = int(np.sum(predicted == 0)), int(np.sum(predicted == 1))
    assert n0 > 5 and n1 > 3
    expected = [[n0 - 5, 3], [5, n1 - 3]]
    np.savez(tmp_path / "val.npz", x=x, y=labels)
    out = tmp_path / "demo-1.2.0.eapkg"
    rc = main(
        [
            "package",
            str(model_path),
            "--name",
            "demo",
            "--version",
            "1.2.0",
            "--validation",
            str(tmp_path / "val.npz"),
            "--labels",
            "normal,anomaly",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    html_path = tmp_path / "demo-1.2.0.eapkg.report.html"
    shots = artefacts_dir(request.node.name)
    with chromium(tmp_path) as driver:
        driver.get(html_path.as_uri())
        for variant in ("reference", "candidate"):
            assert _shown_matrix(driver, variant) == expected
        accuracy = driver.find_element(By.CSS_SELECTOR, "table.accuracy tr[data-output]").text
        assert f"{(n0 + n1 - 8) / (n0 + n1):.4f}" in accuracy
        # per-class recall of 'anomaly' (reference): (n1 - 3) / n1
        assert (
            f"{(n1 - 3) / n1:.3f}" in driver.find_element(By.CSS_SELECTOR, "table.per-class").text
        )
        assert driver.find_elements(By.CSS_SELECTOR, "svg.histogram")
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.golden tr")) == 4  # 3 + header
        screenshot(driver, shots, "report-file")

        # the dashboard's releases page shows the same report for the announced package
        ann = announcement_from_package(out, "canary", "http://store.invalid", Targets())
        publish_once(
            MqttSection(host=broker.host, port=broker.port),
            "announce",
            [OutgoingMessage("edge/ota/canary/demo", ann.to_bytes(), 1, True)],
        )
        with DashboardProcess(broker, tmp_path / "dash") as dash:
            driver.get(dash.url + "/releases")
            href = wait_for(
                driver,
                lambda d: d.find_element(
                    By.CSS_SELECTOR, "tr[data-channel='canary'] a"
                ).get_attribute("href"),
                "the canary release listed",
            )
            driver.get(href)  # a stable URL: /releases/canary/demo
            assert href.endswith("/releases/canary/demo")
            for variant in ("reference", "candidate"):
                wait_for(
                    driver,
                    lambda d, v=variant: _shown_matrix(d, v) == expected,  # type: ignore[misc]
                    f"the {variant} matrix on the releases page",
                )
            assert driver.find_element(By.ID, "release-version").text == "1.2.0"
            screenshot(driver, shots, "report-dashboard")
