"""`aitraining chat` in a real browser: the command serves a tiny LoRA run on a free port, Debian's Chromium (headless,
driven by selenium through Debian's chromedriver) sends messages and reads the page.

`make test` installs chromium and chromium-driver when they are missing; only where they cannot be installed does
this test skip, saying so. AITRAINING_CHAT_SCREENSHOT=path also keeps the page's screenshot there (the README's).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import greedy_answer
from test_chat import inference_answer, train

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Headless, and nothing of the browser's own reaches the network (updates, sync, QUIC probes).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,900")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.is_file() and DRIVER.is_file()):
        pytest.skip("no /usr/bin/chromium with /usr/bin/chromedriver: `make test` installs Debian's chromium and "
                    "chromium-driver, which could not be installed on this machine")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(tmp_path, chat_model):
    """`aitraining chat` on a finished LoRA run, on a port the system picks; its address as it prints it."""
    run = train(tmp_path / "arithmetic-orpo", chat_model, peft=True, merge_adapter=False)
    command = [sys.executable, "-m", "autotrain", "chat", "--project-name", str(run), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        found = re.match(r"aitraining chat: (http://127\.0\.0\.1:\d+/) \(1 finished run\); Ctrl\+C stops$", first)
        assert found, first + server.stderr.read() if server.poll() is not None else first
        yield found.group(1), run
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        finally:
            server.kill()
    assert server.returncode == 0, server.stderr.read()


def test_the_page_streams_an_answer_and_compares_it_with_the_starting_model(page, browser, chat_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, run = page
    wait = WebDriverWait(browser, 240)
    text = lambda element: browser.execute_script("return arguments[0].textContent", element)  # noqa: E731
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs li.chosen"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#card-samples td"))
    tokens = browser.find_element(By.ID, "max_new_tokens")
    tokens.clear()
    tokens.send_keys("64")
    assert browser.find_element(By.ID, "greedy").is_selected()

    def send(prompt: str) -> None:
        browser.find_element(By.ID, "prompt").send_keys(prompt)
        browser.find_element(By.ID, "send").click()

    send("3+4=")
    (answer,) = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log-trained .message.assistant.done"))
    expected = inference_answer(run, "3+4=", 64)
    assert text(answer) == expected and len(expected) > 1
    # Streamed: the answer came in as several pieces (one a token), not at once.
    assert int(answer.get_attribute("data-chunks")) > 1

    browser.find_element(By.ID, "compare").click()  # a new conversation, now on both sides
    assert browser.find_element(By.ID, "column-base").is_displayed()
    send("5+2=")
    trained = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log-trained .message.assistant.done"))
    base = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log-base .message.assistant.done"))
    assert [text(e) for e in trained] == [inference_answer(run, "5+2=", 64)]
    assert [text(e) for e in base] == [greedy_answer(chat_model, run, "5+2=")]  # stock transformers, base model
    assert text(trained[0]) != text(base[0])
    assert browser.find_element(By.ID, "error").is_displayed() is False

    # Nothing was fetched from anywhere but the page's own server.
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(name.startswith(url) for name in fetched), fetched
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("AITRAINING_CHAT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["AITRAINING_CHAT_SCREENSHOT"])

    # The settings are the tab's: kept when it reloads, a new tab starts from the defaults.
    settings = lambda: (browser.find_element(By.ID, "max_new_tokens").get_attribute("value"),  # noqa: E731
                        browser.find_element(By.ID, "compare").is_selected())
    browser.refresh()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs li.chosen"))
    assert settings() == ("64", True)
    browser.switch_to.new_window("tab")
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs li.chosen"))
    assert settings() == ("128", False)
