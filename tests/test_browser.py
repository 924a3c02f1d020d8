"""What a person sees, in a real browser (headless Chromium through selenium).

One tiny real search (SGD and SAM references, 2 ESAM trials, 1 epoch) for the module; then
- its pareto.html artifact, opened from disk: the plotly figure rendered every finished run as a point,
  the front and both references included;
- `mlflow server` over its store, at the runs URL the search printed: the runs table (not the GenAI
  overview) with the search's parent run and, under it, every trial and reference.
Screenshots go under the pytest temp dir; their paths are printed (pytest -rP shows them).
Each test asks for `chrome` first: without a browser it is skipped before the search runs.
"""
import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import mlflow.artifacts
import pytest
from conftest import MlflowServer, search_in, small_search
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
NAME = "browse"
TIMEOUT = 90  # seconds for a page to render on a busy 2-core machine


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """The search, run once: (directory, captured stdout, client, parent run, child runs)."""
    directory = tmp_path_factory.mktemp("browser")
    path = small_search(directory, NAME, trials=2, references=("sgd", "sam"), epochs=1)
    out = search_in(directory, path)
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("esam").experiment_id], "tags.`esam.kind` = 'search'")
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return directory, out, client, parent, children


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def _screenshot(driver, directory, name: str) -> None:
    path = directory / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def _wait(driver, condition, what: str, shots, name: str):
    """WebDriverWait that saves a screenshot of what was shown when the condition never held."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.5).until(condition)
    except TimeoutException:
        _screenshot(driver, shots, f"{name}-timeout")
        body = driver.execute_script("return document.body ? document.body.innerText : ''")
        pytest.fail(f"{what} within {TIMEOUT} s; the page ({driver.current_url}) showed:\n{body[:1500]}")


def _link(driver, run_id: str):
    """The link to the run in its row's Run Name cell (the cell also holds its colour and expand control)."""
    cell = f'[role=row][row-id="{run_id}"] [col-id="attributes.`Run Name`"]'
    links = driver.find_elements("css selector", f'{cell} a[href*="{run_id}"]')
    assert links, driver.find_element("css selector", cell).get_attribute("outerHTML")
    return links[0]


def _run_link(driver, run_id: str) -> str:
    return _link(driver, run_id).text.strip()


def _row_index(driver, run_id: str) -> int:
    return int(driver.find_element("css selector", f'[role=row][row-id="{run_id}"]').get_attribute("row-index"))


def _finished(children, kind):
    return [r for r in children if r.data.tags.get("esam.kind") == kind and r.info.status == "FINISHED"
            and all(math.isfinite(r.data.metrics.get(m, math.nan)) for m in ("test_acc", "speed_vs_sgd"))]


# The figure as the page holds it and as plotly drew it: per trace its name, its data length and the
# marker paths rendered for it in the SVG (traces are drawn in data order).
FIGURE_JS = """
const gd = document.querySelector('.js-plotly-plot');
if (!gd || !gd.data || !gd._fullLayout) return null;
const drawn = Array.from(gd.querySelectorAll('.scatterlayer .trace'));
if (drawn.length !== gd.data.length) return null;
return {
  traces: gd.data.map((t, i) => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y),
                                  drawn: drawn[i].querySelectorAll('.points path.point').length})),
  legend: Array.from(gd.querySelectorAll('.legend .legendtext')).map(e => e.textContent),
};
"""


def test_pareto_html_renders_every_run_with_both_references(chrome, search, shots):
    directory, _, client, parent, children = search
    html = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="pareto/pareto.html",
                                               dst_path=str(directory), tracking_uri=client.tracking_uri)
    from esam.search.front.report import write_plotlyjs
    write_plotlyjs(Path(html).parent)  # offline, as the README says: plotly.js beside the page (no CDN here)
    chrome.get(f"file://{html}")
    figure = _wait(chrome, lambda d: d.execute_script(FIGURE_JS), "pareto.html drew no plotly figure", shots, "pareto")
    _screenshot(chrome, shots, "pareto")

    traces = {t["name"]: t for t in figure["traces"]}
    for t in figure["traces"]:
        assert t["drawn"] == len(t["x"]) == len(t["y"]), f"{t['name']!r}: {t['drawn']} points drawn of {len(t['x'])}"
    trials, references = _finished(children, "trial"), _finished(children, "reference")
    front = [r for r in trials if r.data.tags.get("pareto") == "true"]
    assert len(trials) == 2 and front, [(r.info.run_name, r.info.status) for r in children]
    assert len(traces.get("Pareto front", {"x": []})["x"]) == len(front)
    assert len(traces.get("ESAM trials", {"x": []})["x"]) == len(trials) - len(front)
    for ref in references:  # each reference is its own trace, at its recorded accuracy and speed
        name = ref.data.params["optimizer"].upper()
        assert name in traces, f"no {name} trace in {sorted(traces)}"
        assert traces[name]["x"] == pytest.approx([ref.data.metrics["speed_vs_sgd"]])
        assert traces[name]["y"] == pytest.approx([ref.data.metrics["test_acc"]])
    assert sorted(r.data.params["optimizer"] for r in references) == ["sam", "sgd"]
    assert sum(t["drawn"] for t in figure["traces"]) == len(trials) + len(references)
    assert {"Pareto front", "SGD", "SAM"} <= set(figure["legend"])
    errors = [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_runs_url_shows_the_parent_with_its_trials(chrome, search, shots):
    directory, out, _, parent, children = search
    printed = re.findall(r"https?://\S+/#/experiments/\S+/runs\S*", out)
    assert printed, f"the search printed no runs URL:\n{out[-1500:]}"
    page = urlsplit(printed[-1]).fragment  # printed for `mlflow ui` on its default port; served here on a free one
    assert page == f"/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning"
    server = MlflowServer(directory, store=directory / "mlflow.db")
    server.start()
    try:
        chrome.get(f"{server.url}/#{page}")
        parent_id = parent.info.run_id
        name_cell = f'[role=row][row-id="{parent_id}"] [col-id="attributes.`Run Name`"]'
        _wait(chrome, lambda d: d.find_elements("css selector", name_cell),
              "the runs table did not list the search's run", shots, "mlflow-runs")
        assert "/runs" in chrome.current_url and "/overview" not in chrome.current_url, chrome.current_url
        text = chrome.execute_script("return document.body.innerText")
        for genai in ("Token Usage", "Tool calls", "Cost Breakdown", "Judges"):  # the GenAI overview and sidebar
            assert genai not in text, f"the GenAI overview is shown ({genai!r}), not the runs table"
        assert _run_link(chrome, parent_id) == NAME
        _screenshot(chrome, shots, "mlflow-runs")

        def rows_of(d):
            return {e.get_attribute("row-id") for e in d.find_elements("css selector", "[role=row][row-id]")}
        kids = {r.info.run_id: r.info.run_name for r in children}
        assert len(kids) == 4, kids  # 2 references + 2 trials
        if not set(kids) <= rows_of(chrome):  # nested runs are collapsed under their parent: expand it
            chrome.find_element("css selector", f"{name_cell} button").click()
        _wait(chrome, lambda d: set(kids) <= rows_of(d), "the parent's nested runs did not appear under it",
              shots, "mlflow-runs-expanded")
        # Nested: right below the parent, each named, its name indented past the parent's.
        assert _run_link(chrome, parent_id) == NAME
        below = {_row_index(chrome, run_id) - _row_index(chrome, parent_id) for run_id in kids}
        assert below == set(range(1, len(kids) + 1)), below
        indent = _link(chrome, parent_id).location["x"]
        for run_id, run_name in kids.items():
            assert _run_link(chrome, run_id) == run_name
            assert _link(chrome, run_id).location["x"] > indent
        _screenshot(chrome, shots, "mlflow-runs-expanded")
    finally:
        server.stop()
