"""`esam ui`: a search's MLflow store in the browser, in MLflow's Model training mode however one gets there.

Fast: the script the proxy adds, the saved view, one-line errors. Slow: one tiny real search (1 trial,
1 epoch, no references) for the module, `esam ui` over its ./mlflow.db on a free port, then
- over HTTP: the index page carries the script, MLflow's API answers through the proxy, the view is tagged;
- in headless Chromium with a new profile: home page -> experiment `esam` -> the runs table (not the GenAI
  overview), the parent run's page still in Model training mode, the printed page with the saved view;
- the same clicks on a plain `mlflow server` land on the GenAI overview (what `esam ui` exists for);
- SIGTERM ends `esam ui` with status 0 and its `mlflow server` with it.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import MlflowServer, search_in, small_search

from esam.search.browse.saved_view import TAG_PREFIX, view_key, view_state
from esam.search.browse.ui_proxy import PREFERENCE, SCRIPT, with_preference

NAME = "uitiny"
TIMEOUT = 90  # seconds for a page to render on a busy 2-core machine
GENAI = ("Token Usage", "No data available", "Tool calls", "Judges")  # the GenAI overview and its side bar


# --- fast ---------------------------------------------------------------------------------------------------------

def test_the_script_goes_first_into_the_head_and_sets_only_a_missing_preference():
    page = with_preference(b'<!doctype html><html><head><meta charset="utf-8"/><script defer src="main.js"></script>')
    assert page.startswith(b"<!doctype html><html><head><script>") and page.index(SCRIPT.encode()) < page.index(b"main.js")
    assert f'["{PREFERENCE[0]}", {json.dumps(PREFERENCE[1])}]' in SCRIPT and "getItem(k)===null" in SCRIPT
    assert with_preference(b"<p>no head</p>").endswith(b"<p>no head</p>")


def test_the_saved_view_shows_the_searchs_runs_its_objectives_and_their_scatter():
    state = view_state("abc123", [("test_acc", "max"), ("speed_vs_sgd", "max")], ("rho", "beta", "gamma"))
    assert state["searchFilter"] == "tags.`mlflow.parentRunId` = 'abc123'"
    assert state["orderByKey"] == "metrics.`test_acc`" and state["orderByAsc"] is False
    assert state["selectedColumns"][:2] == ["metrics.`test_acc`", "metrics.`speed_vs_sgd`"]
    assert "params.`rho`" in state["selectedColumns"] and state["runsHiddenMode"] == "SHOW_ALL"
    (chart,) = state["compareRunCharts"]
    assert chart["type"] == "SCATTER" and chart["xaxis"]["key"] == "speed_vs_sgd" and chart["yaxis"]["key"] == "test_acc"
    assert chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]
    assert view_state("p", [("test_loss", "min"), ("step_time_vs_sgd", "min")])["orderByAsc"] is True


def test_ui_errors_are_one_line(tmp_path, capsys):
    from esam.cli import main
    assert main(["ui", "--no-browser"]) == 2  # no ./mlflow.db: nothing created, nothing served
    err = capsys.readouterr().err
    assert err.startswith("esam: error: no MLflow store at ") and err.count("\n") == 1, err
    assert not (tmp_path / "mlflow.db").exists()
    assert main(["ui", "--no-browser", "--tracking-uri", "nonsense"]) == 2
    assert "is not supported" in capsys.readouterr().err


# --- slow: a real search, `esam ui`, a browser --------------------------------------------------------------------

@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """The search, run once: (directory, parent run id, experiment id)."""
    from mlflow.tracking import MlflowClient
    directory = tmp_path_factory.mktemp("ui")
    search_in(directory, small_search(directory, NAME, trials=1, references=(), epochs=1))
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("esam").experiment_id], "tags.`esam.kind` = 'search'")
    return directory, parent.info.run_id, parent.info.experiment_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(search):
    """`esam ui --no-browser` over the search's default store (./mlflow.db); (process, base URL, lines printed)."""
    directory = search[0]
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "esam.cli", "ui", "--no-browser", "--port", str(port)],
                               cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    lines, deadline = [], time.monotonic() + 180
    while not any(line.startswith("Ctrl-C") for line in lines):
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            pytest.fail("esam ui did not start:\n" + "".join(lines) + (process.stdout.read() if not line else ""))
        lines.append(line)
    yield process, f"http://127.0.0.1:{port}", lines
    if process.poll() is None:  # a test failed or was left out before SIGTERM's: end it as a user would
        process.send_signal(signal.SIGTERM)  # (SIGKILL would leave its mlflow server, in a session of its own)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _printed(lines, prefix):
    found = [line.split(None, 1)[1].strip() for line in lines if line.startswith(prefix)]
    assert found, "".join(lines)
    return found[0]


@pytest.mark.slow
def test_ui_serves_the_store_with_the_preference_script_and_the_saved_view(search, ui):
    from mlflow.tracking import MlflowClient
    directory, parent, experiment_id = search
    _, base, lines = ui
    assert _printed(lines, "open:") == (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                                         f"&viewStateShareKey={view_key(parent)}")
    with urllib.request.urlopen(base + "/") as answer:
        page = answer.read().decode()
    assert answer.headers["Content-Length"] == str(len(page.encode())) and "ETag" not in answer.headers
    assert page.index(SCRIPT) < page.index("static-files/static/js/main.")  # before MLflow's bundle
    request = urllib.request.Request(base + "/ajax-api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
                                     headers={"Content-Type": "application/json", "Origin": base})
    with urllib.request.urlopen(request) as answer:  # a state-changing method from our own origin: not blocked
        runs = {r["info"]["run_id"] for r in json.loads(answer.read())["runs"]}
    assert parent in runs and len(runs) == 2  # the search's run and its one trial
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    envelope = json.loads(client.get_experiment(experiment_id).tags[TAG_PREFIX + view_key(parent)])
    assert envelope["name"] == f"esam: {NAME}" and json.loads(envelope["state"])["compareRunCharts"][0]["type"] == "SCATTER"


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.5).until(condition)
    except TimeoutException:
        body = driver.execute_script("return document.body ? document.body.innerText : ''")
        pytest.fail(f"{what} within {TIMEOUT} s; the page ({driver.current_url}) showed:\n{body[:1500]}")


def _text(driver) -> str:
    return driver.execute_script("return document.body.innerText")


def _home_then_experiment(driver, base: str, experiment_id: str) -> None:
    """A browser that never saw this origin: open the home page and click the experiment `esam`."""
    driver.get(base + "/")
    driver.execute_script("localStorage.clear()")  # the module's profile may have met this port before
    driver.refresh()  # a new load of the page, as a browser's first visit
    link = _wait(driver, lambda d: [a for a in d.find_elements("css selector", f'a[href$="#/experiments/{experiment_id}"]')
                                    if a.text.strip() == "esam"], "the home page listed no experiment 'esam'")
    link[0].click()


@pytest.mark.slow
def test_home_page_to_the_experiment_and_its_parent_run_stays_in_model_training(chrome, search, ui):
    _, parent, experiment_id = search
    base = ui[1]
    _home_then_experiment(chrome, base, experiment_id)
    name_cell = f'[role=row][row-id="{parent}"] [col-id="attributes.`Run Name`"] a[href*="{parent}"]'
    link = _wait(chrome, lambda d: d.find_elements("css selector", name_cell), "the runs table did not list the search")
    url, text = chrome.current_url, _text(chrome)
    assert f"/experiments/{experiment_id}/runs" in url and "workflowType=genai" not in url, url
    assert not [g for g in GENAI if g in text], f"the GenAI overview, not the runs table:\n{text[:800]}"
    assert "Model registry" in text  # the side bar's Model training entries
    assert chrome.execute_script(f"return localStorage.getItem('{PREFERENCE[0]}')") == PREFERENCE[1]
    link[0].click()  # the parent run's page: its URL carries no workflowType
    _wait(chrome, lambda d: f"/runs/{parent}" in d.current_url and "Model metrics" in _text(d),
          "the parent run's page did not open with its Model training tabs")
    text = _text(chrome)
    assert "Model registry" in text and not [g for g in GENAI if g in text], text[:800]
    assert "workflowType=genai" not in chrome.current_url


@pytest.mark.slow
def test_the_printed_page_opens_the_saved_view_with_the_objectives_and_their_scatter(chrome, search, ui):
    parent, lines = search[1], ui[2]
    page = _printed(lines, "open:")
    chrome.get(page)
    header = '[role=columnheader][col-id="metrics.`test_acc`"]'
    _wait(chrome, lambda d: d.find_elements("css selector", header), "the saved view showed no test_acc column")
    text = _text(chrome)
    assert f"esam: {NAME}" in text and "speed_vs_sgd" in text, text[:800]
    rows = {e.get_attribute("row-id") for e in chrome.find_elements("css selector", "[role=row][row-id]")}
    assert rows and parent not in rows, rows  # the view lists the search's trials (its filter), not the parent
    chrome.get(page + "&compareRunsMode=CHART")
    _wait(chrome, lambda d: "test_acc vs speed_vs_sgd" in _text(d) or "speed_vs_sgd vs. test_acc" in _text(d),
          "the chart view showed no scatter of the objectives")


@pytest.mark.slow
def test_plain_mlflow_server_opens_the_experiment_on_the_genai_overview(chrome, search):
    """What `esam ui` is for: MLflow 3.17 alone sends a new browser's click on `esam` to the GenAI overview.
    When this fails, MLflow opens Model training by itself and the proxy's script may go."""
    directory, _, experiment_id = search
    server = MlflowServer(directory, store=directory / "mlflow.db")
    server.start()
    try:
        _home_then_experiment(chrome, server.url, experiment_id)
        _wait(chrome, lambda d: "/overview" in d.current_url or "/runs" in d.current_url, "the experiment did not open")
        assert "/overview" in chrome.current_url and "workflowType=genai" in chrome.current_url, chrome.current_url
    finally:
        server.stop()


@pytest.mark.slow
def test_sigterm_stops_ui_and_its_mlflow_server(ui):
    process, base, lines = ui
    served = re.search(r"mlflow server on (http://127\.0\.0\.1:\d+) \(pid (\d+)", "".join(lines))
    assert served, "".join(lines)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert "esam ui: stopped" in process.stdout.read()
    for url in (base, served.group(1)):
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=5)
    with pytest.raises(ProcessLookupError):
        os.kill(int(served.group(2)), 0)
