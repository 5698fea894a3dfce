"""The review page: in a real headless browser (Debian's chromium with selenium), relabel three images, reload,
export, and check the files; the label store, conflicts between tabs and bad input through the same server."""

import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from deepsea.data import scan_labelled_folder
from deepsea.data.synthetic import make_synthetic
from deepsea.errors import UserError
from deepsea.review import load_review_set, serve
from deepsea.submission import write_submission

CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def predictions(tmp_path):
    """24 generated images and a prediction CSV for them over their 12 classes (a noisy classifier)."""
    root = tmp_path / "cruise"
    make_synthetic(root, per_class=2, progress=False)
    names = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    classes = sorted({n.split(os.sep)[0] for n in names})
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(len(classes), 0.3), len(names))
    csv = str(tmp_path / "cruise.csv")
    write_submission(csv, names, classes, probs)
    return csv, str(root), names, classes, probs


@pytest.fixture
def server(predictions, tmp_path):
    csv, root, *_ = predictions
    urls = []
    srv = serve(load_review_set(csv, root), str(tmp_path / "labels.sqlite"), str(tmp_path / "out"), ready=urls.append)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield urls[0]
    srv.shutdown()
    srv.server_close()
    thread.join()


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def test_the_page_relabels_keeps_the_labels_across_a_reload_and_exports(server, predictions, tmp_path):
    if CHROMEDRIVER is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium and chromium-driver (.ci/run installs them)")
        pytest.skip("no chromedriver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    classes = predictions[3]
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException, IndexError))

    def tiles() -> list[dict]:  # the grid as the page shows it, read in one go (it re-renders after each label)
        return driver.execute_script(
            "return [...document.querySelectorAll('.tile')].map(t => ({image: t.dataset.image, text: t.innerText,"
            " sug: [...t.querySelectorAll('.sug')].map(s => s.dataset.c)}))"
        )

    def click(css: str) -> None:  # a real click on a freshly found element
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True)

    def show(cls: str) -> None:
        click(f'.cls[data-c="{cls}"]')
        wait.until(lambda d: d.find_element(By.ID, "head").text.startswith(f"{cls}:") and tiles())

    try:
        driver.get(server)
        wait.until(lambda d: tiles())
        by_size = sorted(driver.execute_script("return [...document.querySelectorAll('.cls')].map(c => c.innerText)"),
                         key=lambda t: -int(t.split("/")[-1].rstrip(")")))  # fmt: skip
        big = by_size[0].rsplit(" (", 1)[0]  # the class with the most images
        show(big)
        assert len(tiles()) >= 3, "the noisy classifier predicts one class for three images or more"
        labels = {}
        t0 = tiles()[0]  # 1: a click on the first tile's second suggestion
        labels[t0["image"]] = t0["sug"][1]
        click(f'.tile[data-n="0"] .sug[data-c="{t0["sug"][1]}"]')
        wait.until(lambda d: "label:" in tiles()[0]["text"])
        t1 = tiles()[1]  # 2: the next tile is selected; Enter accepts its top suggestion
        labels[t1["image"]] = t1["sug"][0]
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
        wait.until(lambda d: "label:" in tiles()[1]["text"])
        t2 = tiles()[2]  # 3: the third tile is selected now; r, a typed class and Enter relabel it
        labels[t2["image"]] = classes[-1]
        driver.find_element(By.TAG_NAME, "body").send_keys("r")
        wait.until(lambda d: d.find_element(By.ID, "relabel")).send_keys(classes[-1], Keys.ENTER)
        wait.until(lambda d: f"label: {classes[-1]}" in tiles()[2]["text"])
        driver.refresh()  # the labels come back from SQLite
        wait.until(lambda d: tiles())
        show(big)
        shown = {t["image"]: t["text"].split("label: ")[1].split("\n")[0] for t in tiles() if "label: " in t["text"]}
        assert shown == labels and len(labels) == 3
        click("#export")
        wait.until(lambda d: "exported 3 images" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()
    out = tmp_path / "out"
    tsv = (out / "ecotaxa.tsv").read_text().splitlines()
    assert len(tsv) == 2 + 3 and all(line.split("\t")[3] == "validated" for line in tsv[2:])
    assert {line.split("\t")[2] for line in tsv[2:]} == set(labels.values())
    linked = {c for c in os.listdir(out / "images") if not c.startswith(".") for _ in os.listdir(out / "images" / c)}
    assert linked == set(labels.values())
    assert len(scan_labelled_folder(str(out / "images"))) == 3  # what deepsea train --data reads


def test_labels_survive_a_restart_and_a_stale_tab_is_told(predictions, tmp_path):
    csv, root, names, classes, _ = predictions
    review = load_review_set(csv, root)
    db, out = str(tmp_path / "labels.sqlite"), str(tmp_path / "out")
    for run in range(2):
        urls = []
        srv = serve(review, db, out, ready=urls.append)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            url = urls[0]
            if run == 0:
                assert _post(url + "api/label", {"image": names[0], "label": classes[3], "expected": None})[0] == 200
                code, body = _post(url + "api/label", {"image": names[0], "label": classes[4], "expected": None})
                assert code == 409 and body["label"] == classes[3] and "another tab" in body["error"]
                assert _post(url + "api/label", {"image": names[0], "label": "kraken", "expected": None})[0] == 400
                assert _post(url + "api/label", {"image": "nowhere.jpg", "label": classes[0]})[0] == 404
            else:  # after a restart: the label is there, and the tab that saw it can change it
                cls = classes[int(review.predicted[0])]
                items = _get(url + f"api/items?class={cls}")["items"]
                assert next(i for i in items if i["image"] == names[0])["label"] == classes[3]
                assert (
                    _post(url + "api/label", {"image": names[0], "label": classes[4], "expected": classes[3]})[0] == 200
                )
        finally:
            srv.shutdown()
            srv.server_close()
            thread.join()


def test_malformed_csvs_missing_images_and_a_store_of_other_classes(predictions, tmp_path):
    csv, root, names, _, _ = predictions
    bad = tmp_path / "bad.csv"
    bad.write_text("name,a,b\nx.jpg,0.5,0.5\n")
    with pytest.raises(UserError, match="header must start with 'image'"):
        load_review_set(str(bad), root)
    bad.write_text("image,a,b\nx.jpg,0.5,oops\n")
    with pytest.raises(UserError, match=r"bad.csv, line 2: a probability is not a number"):
        load_review_set(str(bad), root)
    os.remove(os.path.join(root, names[0]))
    review = load_review_set(csv, root)
    assert review.missing == (names[0],)
    bad.write_text("image,a,b\n" + names[1] + ",0.5,0.5\n")
    serve(review, str(tmp_path / "l.sqlite"), str(tmp_path / "o")).server_close()
    with pytest.raises(UserError, match="holds labels for other classes"):
        serve(load_review_set(str(bad), root), str(tmp_path / "l.sqlite"), str(tmp_path / "o"))
