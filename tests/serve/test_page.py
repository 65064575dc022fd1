"""The search page in a real headless Chromium: a query in the URL renders result cards."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

CARD = re.compile(r'<article class="result" data-item-id="([^"]+)">(.*?)</article>', re.S)


@pytest.fixture
def chromium() -> str:
    """The browser wherever it is on PATH (Debian: chromium; Ubuntu/others: chromium-browser).
    A missing browser fails the test: the page would otherwise go untested unnoticed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("the search-page test needs a headless Chromium on PATH (chromium or "
                    "chromium-browser): apt-get install chromium (.ci/run installs it)")
    return found


def rendered_dom(browser: str, url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran. Virtual time only advances while the page is idle,
    so the budget covers the fetches to the app without sleeping in real time."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=30000",
               "--dump-dom", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180,
                          check=True).stdout


def test_a_query_renders_result_cards(chromium, live_app, tmp_path):
    expected = requests.post(f"{live_app.url}/search", json={"text": "apple juice", "k": 5},
                             timeout=60).json()["hits"]
    dom = rendered_dom(chromium, f"{live_app.url}/?q=apple+juice&k=5", tmp_path)
    cards = CARD.findall(dom)
    assert [item_id for item_id, _ in cards] == [hit["item_id"] for hit in expected]
    assert any(hit["image_url"] for hit in expected) and any(hit["attributes"] for hit in expected)
    for (_, card), hit in zip(cards, expected):
        label = hit["title"] or hit["item_id"]
        if hit["image_url"]:
            assert f'<img alt="{label}" src="{hit["image_url"]}">' in card
        else:
            assert "<img" not in card, card
        assert f"<h3>{label}</h3>" in card
        for key, value in hit["attributes"].items():  # (each <li> is a click-to-filter)
            assert re.search(rf"<li[^>]*>{re.escape(f'{key}: {value}')}</li>", card), (key, card)
    assert re.search(r'<div id="status" role="status"[^>]*>5 results in \d+ ms', dom)


def test_a_text_only_hit_gets_a_card_without_an_image(chromium, live_app, tmp_path):
    """A catalog item without a photo renders title and attributes, and no empty image box."""
    item_id, title = "test/text-only-cordial", "Elderflower cordial text only"
    put = requests.put(f"{live_app.url}/items/{item_id}", timeout=60,
                       json={"title": title, "attributes": {"flavour": "elderflower"}})
    assert put.status_code == 201, put.text
    try:
        dom = rendered_dom(chromium, f"{live_app.url}/?q=elderflower+cordial&k=5", tmp_path)
    finally:
        requests.delete(f"{live_app.url}/items/{item_id}", timeout=60)
    cards = dict(CARD.findall(dom))
    assert f"<h3>{title}</h3>" in cards[item_id]
    assert re.search(r"<li[^>]*>flavour: elderflower</li>", cards[item_id])
    assert "<img" not in cards[item_id]
    assert any("<img" in card for card in cards.values())  # the others keep their photos


def test_cards_explain_why_and_show_the_generated_query_attributes(chromium, live_app,
                                                                   tmp_path):
    """Enrichment is on by default (the app has a generator): the page shows what the generator
    wrote, and each card's "why this result" holds its score and the attributes it shares with
    the query. A screenshot is kept as a test artifact."""
    import os

    from afmrl.config import REPO_ROOT

    body = requests.post(f"{live_app.url}/search", json={"text": "apple juice", "k": 4},
                         timeout=60).json()
    assert body["query_attributes"], "enrichment is on by default with a generator"
    dom = rendered_dom(chromium, f"{live_app.url}/?q=apple+juice&k=4", tmp_path / "dom")
    understood = re.search(r'<div id="understood">(.*?)</div>', dom, re.S).group(1)
    for key, value in body["query_attributes"].items():
        assert f"<span>{key}: {value}</span>" in understood
    cards = CARD.findall(dom)
    assert [item_id for item_id, _ in cards] == [hit["item_id"] for hit in body["hits"]]
    for (_, card), hit in zip(cards, body["hits"]):
        assert "<summary>why this result</summary>" in card
        assert f"<td>score</td><td>{hit['score']:.3f}</td>" in card
        shared = [f"{k}: {v}" for k, v in hit["attributes"].items()
                  if body["query_attributes"].get(k) == v]
        assert f"<td>shared attributes</td><td>{'; '.join(shared) or 'none'}</td>" in card

    artifacts = Path(os.environ.get("AFMRL_TEST_ARTIFACTS", REPO_ROOT / "runs" / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "search_page.png"
    shot.unlink(missing_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'shot'}", "--hide-scrollbars",
                    "--window-size=1200,900", "--virtual-time-budget=30000",
                    f"--screenshot={shot}", f"{live_app.url}/?q=apple+juice&k=8"],
                   capture_output=True, timeout=180, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
