"""The technician's page in a real browser: headless Chromium driven by selenium.

The agent is the in-process harness (the real core against the simulator process, the real
gateway on HTTP), so what the page shows comes from the bus through the API and the stream, and
the page runs under the agent's own Content-Security-Policy. Screenshots (after login, after the
E-stop, after the reset) go to the test's tmp directory and are copied to `test-artifacts/`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.store.commands import TERMINAL_STATES
from drivers.sim.client import SimProcess
from tests.integration.test_api_harness import PASSWORD, Agent, start_agent

selenium = pytest.importorskip("selenium", reason="selenium is not installed (the dev extra has it)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "page-browser"
WAIT_S = 8.0
OBSTACLE = "v-safety-ANALOG_INPUT_1"
POSITION = "v-travel-M1_POSITION_CURRENT"
MOVE = {"direction": "forward", "speed_pct": 60, "distance_cm": 10}

pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
    ),
    pytest.mark.realtime,  # resets until IDLE: `make test` runs it alone
]


@pytest.fixture(scope="module")
def agent_and_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, SimProcess]]:
    for agent, sim in start_agent(tmp_path_factory.mktemp("page")):
        agent.add_user("tech", "technician")
        yield agent, sim


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=412,915"):
        options.add_argument(arg)  # a phone-sized window: the page must work in one column
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def idle_after_reset(api: httpx.Client) -> bool:
    if api.get("/api/v1/status").json()["state"] == "IDLE":
        return True
    api.post("/api/v1/reset")
    return False


class Page:
    """The page as the technician sees it: texts by element id, waits that say what was awaited."""

    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def wait(self, what: str, condition: Any, timeout: float = WAIT_S, poll: float = 0.2) -> Any:
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=poll).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(
                f"{what}: not seen within {timeout} s; state {self.text('state')!r}, faults {self.text('faults')!r}, "
                f"link {self.text('link')!r}, E-stop {self.text('estop-result')!r}, reset {self.text('reset-result')!r}"
            ) from None

    def click(self, element_id: str) -> None:
        self.driver.find_element(By.ID, element_id).click()

    def shot(self, name: str) -> None:
        assert self.driver.save_screenshot(str(self.shots / f"{name}.png"))


def test_login_live_values_estop_and_reset(
    agent_and_sim: tuple[Agent, SimProcess], browser: Any, tmp_path: Path
) -> None:
    agent, sim = agent_and_sim
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = Page(browser, shots)
    try:
        browser.get(agent.url + "/")
        page.wait("the login form", lambda: browser.find_element(By.ID, "username").is_displayed())
        browser.find_element(By.ID, "username").send_keys("tech")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()

        page.wait("the live panel through the stream", lambda: page.text("link").startswith("live"))
        page.wait("the state", lambda: page.text("state") not in ("", "-"))
        page.wait("the obstacle distance", lambda: page.text(OBSTACLE).endswith(" cm"))
        assert page.text("who") == "technician" and browser.find_element(By.ID, "reset").is_displayed()
        assert "off" in page.wait("the upstream status", lambda: page.text("upstream") != "-" and page.text("upstream"))
        page.shot("after-login")

        before = page.text(OBSTACLE)
        moved = 251 if before != "251 cm" else 252
        sim.control.obstacle(1, moved)  # the simulated sensor reads farther: a value change, no fault
        page.wait("the changed obstacle distance", lambda: page.text(OBSTACLE) == f"{moved} cm")
        assert page.text("a-safety-ANALOG_INPUT_1").endswith(" s")

        start = page.text(POSITION)
        with agent.client(agent.login("tech")) as api:
            # On a loaded machine the agent may have latched a stale-reading fault: clear it first.
            page.wait("an idle carriage", lambda: idle_after_reset(api), timeout=10)
            answer = api.post(
                "/api/v1/commands", json={"type": "move", "params": MOVE}, headers={"Idempotency-Key": "m1"}
            )
            assert answer.status_code == 201, answer.text
            command = f"/api/v1/commands/{answer.json()['id']}"
            final = page.wait(
                "the move's end", lambda: (s := api.get(command).json()["state"]) in TERMINAL_STATES and s
            )
        page.wait("the move's result on the page", lambda: f"move {final}" in page.text("commands").replace("\n", " "))
        if final == "succeeded":
            page.wait("the carriage's new position", lambda: page.text(POSITION) not in (start, "-"))

        page.click("estop")
        page.wait("the E-stop confirmation", lambda: page.text("estop-result").startswith("E-stop confirmed"))
        page.wait("state ESTOP with its fault code", lambda: page.text("state") == "ESTOP")
        page.wait("the fault code", lambda: "ESTOP_REQUESTED" in page.text("faults"))
        # The E-stop sticks to the top of a phone's screen, also at the bottom of the page.
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        top = browser.execute_script("return document.getElementById('estop').getBoundingClientRect().top")
        assert 0 <= top < browser.execute_script("return window.innerHeight")
        browser.execute_script("window.scrollTo(0, 0)")
        page.shot("after-estop")

        sim.control.estop(pressed=True)  # the hardware input, as a technician would find it pressed
        page.wait("the pressed E-stop input", lambda: "ESTOP_PRESSED" in page.text("faults"))
        page.click("reset")
        refusal = page.wait(
            "the reset refusal",
            lambda: page.text("reset-result").startswith("Reset refused") and page.text("reset-result"),
        )
        assert "RESET_INCOMPLETE" in refusal and "ESTOP_PRESSED" in refusal and "Remove the cause" in refusal

        sim.control.estop(pressed=False)

        def reset_done() -> bool:  # the input released for 50 ms, fresh readings, then the latch
            if not page.text("reset-result").startswith("Reset: cleared"):
                page.click("reset")
                return False
            return True

        page.wait("a complete reset", reset_done, poll=0.7)
        page.wait("the state back", lambda: page.text("state") == "IDLE" and "ESTOP" not in page.text("faults"))
        page.shot("after-reset")
        browser.execute_script("document.getElementById('plot').scrollIntoView({block: 'center'})")
        page.shot("after-reset-plot-and-commands")
        # Refused requests (the 409s above, the favicon's 404) are logged as "network"; a script
        # error or a Content-Security-Policy refusal is not.
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
        assert not errors, f"the page logged errors: {errors}"
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for shot in shots.glob("*.png"):
            shutil.copy2(shot, ARTIFACTS / shot.name)
        print(f"screenshots: {shots} (copied to {ARTIFACTS})")
