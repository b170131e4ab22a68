#!/usr/bin/env python3
"""The web console (/ui) in a real browser: headless Chromium driven by Selenium.

    Tests/Browser/console_test.py [--outdir DIR] [--docs PATH] [--replicas N]

Runs against a local cluster that is already up (scripts/browser-test starts one, runs this
and stops it again): replica i serves clients on http://127.0.0.1:(7400+i). It loads the page
from a follower, checks the DOM contract (one row per registered node, the holder shown as
text, live updates without a reload, the leader badge moving after the leader is SIGKILLed
with `scripts/cluster kill`, no console errors, the same rows with JavaScript off), prints
one line per check (`console: <check>: ok`) and stops at the first failure with exit code 1.

It always leaves a screenshot in DIR: console.png when every check passed, console-failure.png
(with the page's HTML, console-failure.html) when one failed, and the browser's console log
(console-browser.log). --docs PATH also saves a clean screenshot for the README once the data
is in place (every replica up, no banner).

Needs only Selenium and the standard library, and Debian's chromium and chromium-driver:
the browser and its driver are given by path, so Selenium Manager never downloads anything.
Nothing leaves the loopback interface.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# Selenium Manager is never needed (the driver and the browser are given by path); if some
# code path still reached it, it must neither download nor report anything.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoAlertPresentException,
        StaleElementReferenceException,
        TimeoutException,
        UnexpectedAlertPresentException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    print("console: setup: FAILED: Selenium is missing (python3 -m pip install selenium)", file=sys.stderr)
    sys.exit(1)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

HTTP_TIMEOUT = 10  # seconds, for every HTTP call (a write without a leader answers 503 within 5 s)
PAGE_LOAD_TIMEOUT = 30
LIVE_UPDATE_SECONDS = 3  # check c: a new node's row appears within this
FAILOVER_SECONDS = 15  # check d: the leader badge moves within this after the kill
SETTLE_SECONDS = 5  # page and API agreeing, the banner going away

XSS_HOSTNAME = "xss.example.org"
XSS_HOLDER = "<img src=x onerror=alert(1)>"
PLAIN_HOSTNAME = "web1.example.org"
PLAIN_HOLDER = "browser-test-web1"
LIVE_HOSTNAME = "web2.example.org"
LIVE_HOLDER = "browser-test-web2"
TTL_SECONDS = 300


class Failure(Exception):
    """A check failed; the message says what was expected and what was seen."""


class Why(str):
    """A falsy answer to a wait's condition that says why it is not met yet."""

    def __bool__(self):
        return False


# ---------------------------------------------------------------------------------------------
# HTTP, loopback only: no proxy from the environment is ever used.

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            raise Failure(f"not JSON ({e}): {self.body[:300]!r}")

    def header(self, name):
        return self.headers.get(name)


def http(method, url, body=None, timeout=HTTP_TIMEOUT):
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _opener.open(request, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        try:
            return Response(e.code, e.headers, e.read())
        finally:
            e.close()
    except (urllib.error.URLError, OSError) as e:
        raise Failure(f"{method} {url}: {getattr(e, 'reason', e)}")


# ---------------------------------------------------------------------------------------------


class ConsoleTest:
    def __init__(self, args):
        self.args = args
        self.outdir = Path(args.outdir)
        self.replicas = list(range(1, args.replicas + 1))
        self.check_name = "setup"
        self.passed = 0
        self.driver = None  # the browser with JavaScript
        self.nojs = None  # the browser without
        self.current = None  # the one a failure screenshot is taken of
        self.log_lines = []  # the browsers' console, as read so far
        self.severe = []  # its SEVERE entries (the JavaScript browser's)
        self.leader = None
        self.follower = None
        self.live_hostname = LIVE_HOSTNAME
        self.xss_lease = None

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def check(self, name):
        self.check_name = name
        yield
        self.passed += 1
        print(f"console: {name}: ok", flush=True)

    def url(self, replica, path):
        return f"http://127.0.0.1:{self.args.base_port + replica}{path}"

    def get_json(self, replica, path):
        r = http("GET", self.url(replica, path))
        if r.status != 200:
            raise Failure(f"GET {self.url(replica, path)}: {r.status} {r.body[:300]!r}")
        return r, r.json()

    def new_driver(self, javascript):
        for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
            if not os.access(path, os.X_OK):
                raise Failure(f"{path} is missing (apt-get install {package})")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
            # Loopback only. Even headless, Chromium asks Google's servers for the time, for
            # component updates and for signed-in accounts; no host name resolves (so not even
            # a DNS query leaves the machine), and the pages use 127.0.0.1 literally.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--no-proxy-server",
            "--disable-component-update",
            "--disable-background-networking",
            "--disable-domain-reliability",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        if not javascript:
            options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        log = self.outdir / ("chromedriver.log" if javascript else "chromedriver-nojs.log")
        service = Service(executable_path=CHROMEDRIVER, log_output=str(log))
        try:
            driver = webdriver.Chrome(service=service, options=options)
        except WebDriverException as e:
            raise Failure(f"headless Chromium did not start through {CHROMEDRIVER} (see {log}): {e.msg or e}")
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        driver.set_script_timeout(10)
        return driver

    def drain_log(self, driver, which):
        """Reads (and so empties) the browser's console log, keeping every entry."""
        try:
            entries = driver.get_log("browser")
        except WebDriverException:
            return
        for e in entries:
            line = f"[{which}] {e.get('level')} {e.get('message')}"
            self.log_lines.append(line)
            if e.get("level") == "SEVERE" and which == "javascript":
                self.severe.append(e.get("message", ""))

    def wait(self, driver, seconds, condition, message):
        """Waits at most `seconds` for condition(driver) to be truthy; the message says what
        did not happen (a callable gets the last value seen)."""
        last = {}

        def probe(d):
            value = condition(d)
            last["value"] = value
            return value

        try:
            return WebDriverWait(
                driver, seconds, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
            ).until(probe)
        except TimeoutException:
            raise Failure(message(last.get("value")) if callable(message) else message)

    # -- what the page and the API show ------------------------------------------------------

    # One round trip, so the rows are read at one instant even while console.js replaces them.
    ROWS_JS = """
        const text = (row, cls) => { const c = row.querySelector('td.' + cls); return c ? c.textContent.trim() : null; };
        return Array.from(document.querySelectorAll('#nodes tbody tr.node')).map(row => {
            const badge = row.querySelector('td.status span.badge');
            return {id: row.getAttribute('data-node-id'), hostname: text(row, 'hostname'),
                    badge: badge ? Array.from(badge.classList) : null};
        });
    """

    REPLICAS_JS = """
        return Array.from(document.querySelectorAll('#replicas tr.replica')).map(row => ({
            id: row.getAttribute('data-replica-id'),
            leaderBadges: Array.from(row.querySelectorAll('td.role span.badge.leader')).map(b => b.textContent.trim()),
        }));
    """

    def page_rows(self, driver):
        return driver.execute_script(self.ROWS_JS)

    def registry(self, replica, query=""):
        r, nodes = self.get_json(replica, "/v1/cluster/nodes" + query)
        if not isinstance(nodes, list):
            raise Failure(f"/v1/cluster/nodes{query} on replica {replica} is not a JSON array: {r.body[:300]!r}")
        return r.header("X-NodeLease-Registry-Index"), nodes

    @staticmethod
    def mismatch(rows, nodes):
        """Why the page's rows are not the registry's nodes, or None when they are."""
        want = [str(n.get("nodeId")) for n in nodes]
        got = [r["id"] for r in rows]
        if got != want:
            return f"page rows have node ids {got}, /v1/cluster/nodes has {want} ({len(got)} rows, {len(want)} nodes)"
        for row, node in zip(rows, nodes):
            if row["hostname"] != node.get("hostname"):
                return f"node {row['id']}: td.hostname is {row['hostname']!r}, the API says {node.get('hostname')!r}"
            want_class = f"status-{node.get('status')}"
            if row["badge"] is None:
                return f"node {row['id']}: no span.badge in td.status"
            if want_class not in row["badge"]:
                return f"node {row['id']}: status badge has classes {row['badge']}, expected {want_class} (API status {node.get('status')!r})"
        return None

    def rows_match_registry(self, driver, replica, query="", seconds=SETTLE_SECONDS, reload_url=None):
        """Waits until the page's rows are the registry's (the registry may move between a
        read of the API and of the page: an expiry, say). reload_url: the page is static
        (scripts off), so it is loaded again on every try."""
        state = {}

        def agree(d):
            index, nodes = self.registry(replica, query)
            if reload_url:
                d.get(reload_url)
            rows = self.page_rows(d)
            state.update(index=index, nodes=nodes, rows=rows, why=self.mismatch(rows, nodes))
            return state["why"] is None

        self.wait(driver, seconds, agree, lambda _: f"after {seconds} s: {state.get('why')}")
        return state

    def acquire(self, replica, hostname, holder):
        body = {"hostname": hostname, "holder": holder, "ttlSeconds": TTL_SECONDS}
        r = http("POST", self.url(replica, "/v1/leases"), body)
        if r.status != 200:
            raise Failure(f"POST /v1/leases {body} on replica {replica}: {r.status} {r.body[:300]!r}")
        lease = r.json()
        if "nodeId" not in lease or "leaseId" not in lease:
            raise Failure(f"the acquire's answer has no nodeId or leaseId: {r.body[:300]!r}")
        return lease

    def find_leader(self, seconds=30):
        """The leader every answering replica agrees on (and which says it leads)."""
        deadline = time.monotonic() + seconds
        seen = {}
        while time.monotonic() < deadline:
            seen = {}
            for i in self.replicas:
                try:
                    r = http("GET", self.url(i, "/v1/status"), timeout=2)
                    seen[i] = r.json() if r.status == 200 else {"http": r.status}
                except Failure as e:
                    seen[i] = {"error": str(e)}
            leaders = {s.get("leaderId") for s in seen.values() if "replicaId" in s}
            if len(leaders) == 1 and None not in leaders:
                leader = leaders.pop()
                if seen.get(leader, {}).get("role") == "leader":
                    return leader
            time.sleep(0.2)
        raise Failure(f"no leader that every replica agrees on within {seconds} s; /v1/status: {seen}")

    # -- the checks, in order ----------------------------------------------------------------

    def run(self):
        for stale in ("console.png", "console-failure.png", "console-failure.html", "console-nojs.png"):
            (self.outdir / stale).unlink(missing_ok=True)

        with self.check("cluster"):
            self.leader = self.find_leader()
            self.follower = next(i for i in self.replicas if i != self.leader)
            print(f"  leader: replica {self.leader}; the page is loaded from follower {self.follower}", flush=True)
        F, L = self.follower, self.leader
        page = self.url(F, "/ui")

        # a. two nodes, then one row per node of the registry.
        with self.check("acquire 2 nodes"):
            self.forget_live_node()
            self.xss_lease = self.acquire(F, XSS_HOSTNAME, XSS_HOLDER)
            self.acquire(F, PLAIN_HOSTNAME, PLAIN_HOLDER)

        with self.check("GET /ui is HTML with a Content-Security-Policy header"):
            r = http("GET", page)
            if r.status != 200:
                raise Failure(f"GET {page}: {r.status} {r.body[:300]!r}")
            ctype = r.header("Content-Type") or ""
            if not ctype.startswith("text/html"):
                raise Failure(f"GET {page}: Content-Type is {ctype!r}, expected text/html")
            csp = r.header("Content-Security-Policy")
            if not csp:
                raise Failure(f"GET {page}: no Content-Security-Policy header (headers: {dict(r.headers)})")
            print(f"  Content-Security-Policy: {csp}", flush=True)

        self.driver = self.current = self.new_driver(javascript=True)
        d = self.driver
        d.get(page)
        with self.check("one row per node of /v1/cluster/nodes, in order"):
            lives = d.find_elements(By.CSS_SELECTOR, "main#live")
            if len(lives) != 1:
                raise Failure(f"expected one <main id=\"live\">, found {len(lives)}")
            if not d.find_elements(By.CSS_SELECTOR, "table#nodes"):
                raise Failure("no <table id=\"nodes\"> on the page")
            state = self.rows_match_registry(d, F)
            print(f"  {len(state['rows'])} nodes on the page", flush=True)

        with self.check("data-registry-index is the registry index"):
            self.wait(d, SETTLE_SECONDS, lambda d: self.index_agrees(d, F), lambda why: why)

        with self.check("no banner while the cluster is healthy"):
            self.wait(d, SETTLE_SECONDS, lambda d: not d.find_elements(By.ID, "banner"),
                      lambda _: f"#banner is still shown after {SETTLE_SECONDS} s: {self.banner_text(d)!r}")

        with self.check(f"replicas table: one row per replica, leader badge on replica {L}"):
            self.wait(d, SETTLE_SECONDS, lambda d: self.leader_row_is(d, L), lambda why: why)

        with self.check("status filter links"):
            hrefs = [a.get_attribute("href") or "" for a in d.find_elements(By.CSS_SELECTOR, "a.filter")]
            if not any("status=active" in h for h in hrefs):
                raise Failure(f"no a.filter link to ?status=active; a.filter hrefs: {hrefs}")
        self.drain_log(d, "javascript")

        # b. the hostile holder is text, nothing more.
        with self.check("holder shown as text, not markup (XSS)"):
            self.expect_no_alert(d)
            xss_id = str(self.xss_lease["nodeId"])
            cells = d.find_elements(By.CSS_SELECTOR, f'#nodes tr.node[data-node-id="{xss_id}"] td.holder')
            if len(cells) != 1:
                raise Failure(f"expected one td.holder in the row of node {xss_id} ({XSS_HOSTNAME}), found {len(cells)}")
            if cells[0].text != XSS_HOLDER:
                raise Failure(f"td.holder of node {xss_id} shows {cells[0].text!r}, expected the literal {XSS_HOLDER!r}")
            imgs = d.find_elements(By.CSS_SELECTOR, "#nodes img")
            if imgs:
                raise Failure(f"{len(imgs)} img element(s) inside #nodes: {[i.get_attribute('outerHTML') for i in imgs]}")
            self.expect_no_alert(d)
        self.drain_log(d, "javascript")

        # c. a new node appears without a reload.
        with self.check(f"live update: a new node's row within {LIVE_UPDATE_SECONDS} s, no reload"):
            d.execute_script("window.__noReload = 1;")
            before_index = self.page_index(d)
            if any(r["hostname"] == self.live_hostname for r in self.page_rows(d)):
                raise Failure(f"{self.live_hostname} is on the page before it was acquired")
            lease = self.acquire(L, self.live_hostname, LIVE_HOLDER)  # written through the leader
            live_id = str(lease["nodeId"])
            self.wait(d, LIVE_UPDATE_SECONDS,
                      lambda d: any(r["id"] == live_id and r["hostname"] == self.live_hostname for r in self.page_rows(d)),
                      lambda _: f"no row for node {live_id} ({self.live_hostname}) within {LIVE_UPDATE_SECONDS} s of the acquire; "
                                f"page rows: {[r['id'] for r in self.page_rows(d)]}")
            self.expect_not_reloaded(d)
            after_index = self.page_index(d)
            if before_index is not None and after_index is not None and after_index <= before_index:
                raise Failure(f"data-registry-index did not move with the update ({before_index} then {after_index})")
            self.rows_match_registry(d, F)
        self.drain_log(d, "javascript")

        if self.args.docs:
            with self.check(f"docs screenshot {self.args.docs}"):
                self.wait(d, SETTLE_SECONDS, lambda d: not d.find_elements(By.ID, "banner"),
                          lambda _: f"#banner is shown, not a clean screenshot: {self.banner_text(d)!r}")
                d.execute_script("window.scrollTo(0, 0);")
                docs = Path(self.args.docs)
                docs.parent.mkdir(parents=True, exist_ok=True)
                if not d.save_screenshot(str(docs)):
                    raise Failure(f"could not write {docs}")

        # d. the leader dies; the badge moves, still without a reload.
        with self.check(f"leader {L} killed: badge on another replica within {FAILOVER_SECONDS} s, no reload"):
            self.kill(L)
            state = {}

            def moved(d):
                rows = d.execute_script(self.REPLICAS_JS)
                holders = [r["id"] for r in rows if r["leaderBadges"]]
                state["rows"] = rows
                if len(holders) != 1 or holders[0] == str(L):
                    return False
                try:
                    status = http("GET", self.url(F, "/v1/status"), timeout=2).json()
                except Failure:
                    return False
                state["status"] = status
                return str(status.get("leaderId")) == holders[0]

            self.wait(d, FAILOVER_SECONDS, moved,
                      lambda _: f"after {FAILOVER_SECONDS} s the replicas table is {state.get('rows')} "
                                f"(leader badges per row) and replica {F}'s /v1/status is {state.get('status')}")
            self.expect_not_reloaded(d)
            print(f"  new leader: replica {state['status']['leaderId']}", flush=True)
        self.drain_log(d, "javascript")

        # e. nothing went to the console as an error, from the first load on.
        with self.check("no console errors"):
            self.drain_log(d, "javascript")
            if self.severe:
                hint = ""
                if any("favicon.ico" in m for m in self.severe):
                    hint = " (one is the browser's own request for /favicon.ico: serve it, or the page must name an icon)"
                raise Failure(f"{len(self.severe)} SEVERE console entries{hint}:\n  " + "\n  ".join(self.severe))

        # f. with scripts off, the server-rendered page shows the same rows.
        self.nojs = self.current = self.new_driver(javascript=False)
        n = self.nojs
        with self.check("scripts off: JavaScript really is off"):
            n.get("data:text/html,<p id=p>off</p><script>document.getElementById('p').textContent='on'</script>")
            if n.find_element(By.ID, "p").text != "off":
                raise Failure("a script ran in the browser that has JavaScript disabled")
        with self.check("scripts off: the same rows"):
            state = self.rows_match_registry(n, F, reload_url=page)
            with_js = [r["id"] for r in self.page_rows(d)]
            without = [r["id"] for r in state["rows"]]
            if with_js != without:
                raise Failure(f"rows with scripts off {without}, with scripts on {with_js}")
        with self.check("scripts off: the status=active filter"):
            links = [a.get_attribute("href") for a in n.find_elements(By.CSS_SELECTOR, "a.filter")]
            active = [h for h in links if h and "status=active" in h]
            if not active:
                raise Failure(f"no a.filter link to ?status=active; a.filter hrefs: {links}")
            self.rows_match_registry(n, F, query="?status=active", reload_url=active[0])
        with self.check("scripts off: no console errors"):
            entries = n.get_log("browser")
            for e in entries:
                self.log_lines.append(f"[no javascript] {e.get('level')} {e.get('message')}")
            severe = [e.get("message", "") for e in entries if e.get("level") == "SEVERE"]
            if severe:
                raise Failure(f"{len(severe)} SEVERE console entries with scripts off:\n  " + "\n  ".join(severe))
        n.get(page)
        n.save_screenshot(str(self.outdir / "console-nojs.png"))

        # g. the screenshot.
        self.current = d
        with self.check(f"screenshot {self.outdir / 'console.png'}"):
            d.execute_script("window.scrollTo(0, 0);")
            if not d.save_screenshot(str(self.outdir / "console.png")):
                raise Failure(f"could not write {self.outdir / 'console.png'}")

    # -- helpers of the checks ---------------------------------------------------------------

    def forget_live_node(self):
        """Check c needs a hostname the registry does not hold yet. A node left by an earlier
        run is released and forgotten; one held by someone else means another hostname."""
        _, nodes = self.registry(self.follower)
        node = next((n for n in nodes if n.get("hostname") == LIVE_HOSTNAME), None)
        if node is None:
            return
        r = http("POST", self.url(self.leader, "/v1/leases"),
                 {"hostname": LIVE_HOSTNAME, "holder": LIVE_HOLDER, "ttlSeconds": TTL_SECONDS})
        if r.status != 200:
            self.live_hostname = f"web2-{int(time.time())}.example.org"
            return
        lease = r.json()
        r = http("DELETE", self.url(self.leader, f"/v1/leases/{lease['leaseId']}"))
        if r.status != 200:
            raise Failure(f"releasing {LIVE_HOSTNAME} left by an earlier run: {r.status} {r.body[:300]!r}")
        r = http("DELETE", self.url(self.leader, f"/v1/cluster/nodes/{lease['nodeId']}"))
        if r.status != 200:
            raise Failure(f"forgetting {LIVE_HOSTNAME} left by an earlier run: {r.status} {r.body[:300]!r}")

    @staticmethod
    def page_index(d):
        value = d.find_element(By.CSS_SELECTOR, "main#live").get_attribute("data-registry-index")
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    def index_agrees(self, d, replica):
        """True when main#live's data-registry-index is the replica's X-NodeLease-Registry-Index;
        otherwise why not."""
        raw = d.find_element(By.CSS_SELECTOR, "main#live").get_attribute("data-registry-index")
        if raw is None or not raw.isdigit():
            return Why(f"main#live has data-registry-index={raw!r}, expected an integer")
        header, _ = self.registry(replica)
        if header is None:
            return True  # the API has no index to compare with
        return True if raw == header else Why(f"data-registry-index is {raw}, X-NodeLease-Registry-Index is {header}")

    def leader_row_is(self, d, leader):
        rows = d.execute_script(self.REPLICAS_JS)
        ids = sorted(r["id"] for r in rows)
        if ids != sorted(str(i) for i in self.replicas):
            return Why(f"tr.replica rows have data-replica-id {ids}, expected {[str(i) for i in self.replicas]}")
        holders = [(r["id"], r["leaderBadges"]) for r in rows if r["leaderBadges"]]
        if holders != [(str(leader), ["leader"])]:
            return Why(f"span.badge.leader (in td.role) per row: {holders}, expected only replica {leader}'s, with text 'leader'")
        if len(d.find_elements(By.CSS_SELECTOR, "#replicas span.badge.leader")) != 1:
            return Why("a span.badge.leader outside a td.role cell")
        return True

    @staticmethod
    def banner_text(d):
        banners = d.find_elements(By.ID, "banner")
        return banners[0].text if banners else None

    @staticmethod
    def expect_no_alert(d):
        try:
            alert = d.switch_to.alert
        except NoAlertPresentException:
            return
        text = alert.text
        alert.dismiss()
        raise Failure(f"an alert is open ({text!r}): a script ran that should not have")

    @staticmethod
    def expect_not_reloaded(d):
        if d.execute_script("return window.__noReload;") != 1:
            raise Failure("window.__noReload is gone: the page was reloaded (or navigated) instead of updated in place")

    def kill(self, replica):
        script = self.args.cluster_script
        try:
            p = subprocess.run([script, "kill", str(replica)], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Failure(f"{script} kill {replica}: {e}")
        if p.returncode != 0:
            raise Failure(f"{script} kill {replica} exited {p.returncode}: {p.stdout}{p.stderr}")
        print(f"  {(p.stdout + p.stderr).strip()}", flush=True)

    # -- the end, passed or not --------------------------------------------------------------

    def save_failure(self):
        if self.current is None:
            # The failure came before the browser was needed: show the page as it is.
            try:
                self.driver = self.current = self.new_driver(javascript=True)
            except (Failure, WebDriverException) as e:
                print(f"console: no failure screenshot: {e}", file=sys.stderr, flush=True)
                return
            try:
                self.current.get(self.url(self.follower or self.replicas[0], "/ui"))
            except WebDriverException:
                pass  # the browser's error page is the screenshot then
        try:
            self.current.save_screenshot(str(self.outdir / "console-failure.png"))
            (self.outdir / "console-failure.html").write_text(self.current.page_source)
            print(f"console: failure screenshot: {self.outdir / 'console-failure.png'}", file=sys.stderr, flush=True)
        except UnexpectedAlertPresentException as e:
            # The alert is gone now (dismissed by the driver); one more try.
            try:
                self.current.save_screenshot(str(self.outdir / "console-failure.png"))
            except WebDriverException:
                print(f"console: no failure screenshot: {e.msg}", file=sys.stderr, flush=True)
        except (WebDriverException, OSError) as e:
            print(f"console: no failure screenshot: {e}", file=sys.stderr, flush=True)

    def close(self):
        for driver, which in ((self.driver, "javascript"), (self.nojs, None)):
            if driver is None:
                continue
            if which:
                self.drain_log(driver, which)
            try:
                driver.quit()
            except Exception as e:  # the browser may already be gone; quitting must not hide the result
                print(f"console: quitting the browser: {e}", file=sys.stderr, flush=True)
        try:
            (self.outdir / "console-browser.log").write_text("".join(line + "\n" for line in self.log_lines))
        except OSError:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", default=".cluster/browser", help="where screenshots and logs go (default: %(default)s)")
    parser.add_argument("--docs", metavar="PATH", help="also save a clean screenshot for the README there (e.g. docs/console.png)")
    parser.add_argument("--replicas", type=int, default=3, help="replicas 1..N of the local cluster (default: %(default)s)")
    parser.add_argument("--base-port", type=int, default=7400, help="replica i serves clients on this + i (default: %(default)s)")
    parser.add_argument("--cluster-script", default=str(REPO / "scripts" / "cluster"),
                        help="run as SCRIPT kill N to SIGKILL replica N (default: %(default)s)")
    args = parser.parse_args()

    try:
        Path(args.outdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"console: setup: FAILED: cannot make the output directory: {e}", file=sys.stderr)
        sys.exit(1)
    test = ConsoleTest(args)
    failed = None
    try:
        test.run()
    except Failure as e:
        failed = str(e)
    except UnexpectedAlertPresentException as e:
        failed = f"an alert opened ({e.alert_text!r}): a script ran that should not have (the XSS holder?)"
    except WebDriverException as e:
        failed = f"WebDriver: {e.msg or e}"
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        if failed is not None:
            test.save_failure()
        test.close()
    if failed is not None:
        print(f"console: {test.check_name}: FAILED: {failed}", file=sys.stderr, flush=True)
        print(f"console: {test.passed} passed, 1 failed", flush=True)
        sys.exit(1)
    print(f"console: {test.passed} passed, 0 failed", flush=True)


if __name__ == "__main__":
    main()
