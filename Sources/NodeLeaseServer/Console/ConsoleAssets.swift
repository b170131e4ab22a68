import Mustache

/// The web console's templates, style sheet and script, served by every replica (nothing
/// comes from elsewhere: the Content-Security-Policy allows this origin only). The templates
/// are mustache, which HTML-escapes every `{{value}}`; none uses the unescaped `{{{ }}}`.
enum ConsoleAssets {
    /// The templates, parsed once; a template that does not parse is a bug caught by the tests
    /// (and a replica that cannot build them does not start).
    static func library() throws -> MustacheLibrary {
        var library = MustacheLibrary()
        try library.register(page, named: "page")
        try library.register(live, named: "live")
        try library.register(login, named: "login")
        try library.register(confirmForget, named: "forget")
        try library.register(message, named: "message")
        return library
    }

    static let head = """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>{{title}}</title>
        <link rel="stylesheet" href="/ui/console.css">
        <link rel="icon" href="/favicon.ico" type="image/svg+xml">
        """

    static let header = """
        <header>
        <h1><a href="/ui">NodeLease</a> <span class="muted">cluster {{clusterId}} · replica {{replicaId}}</span></h1>
        <div class="who">{{#user}}{{name}} ({{role}}) <form method="post" action="/ui/logout" class="inline"><button type="submit">Sign out</button></form>{{/user}}{{^user}}<span class="muted">authentication off</span>{{/user}}</div>
        </header>
        """

    /// The end of the head and the page header, for the pages without a script.
    static let top = head + """
        </head>
        <body>
        """ + header

    static let page = head + """
        <script src="/ui/console.js" defer></script>
        </head>
        <body data-replica="{{replicaId}}">
        """ + header + """
        {{#notice}}<p class="notice">{{.}}</p>{{/notice}}
        <div id="lost" class="banner" hidden></div>
        <main id="live" data-registry-index="{{registryIndex}}" data-status="{{filter}}">
        {{> live}}
        </main>
        <footer class="muted">Updates live with scripts on; without them, reload the page. <a href="/ui{{filterQuery}}">Reload</a></footer>
        </body>
        </html>
        """

    /// What the script replaces as the registry changes: everything that can change.
    static let live = """
        {{#banner}}<div id="banner" class="banner">{{.}}</div>{{/banner}}
        <section class="summary">
        <div class="count"><span class="badge status-active">active</span> <b>{{active}}</b></div>
        <div class="count"><span class="badge status-stale">stale</span> <b>{{stale}}</b></div>
        <div class="count"><span class="badge status-inactive">inactive</span> <b>{{inactive}}</b></div>
        <div class="count{{#idsLow}} low{{/idsLow}}" id="ids-left">IDs left <b>{{idsLeft}}</b> of {{rangeSize}} <span class="muted">({{range}})</span></div>
        <div class="count muted">as of log index {{appliedIndex}}, {{asOf}}</div>
        </section>
        {{#idsWarning}}<div class="banner warn" id="ids-warning">{{.}}</div>{{/idsWarning}}
        <h2>Nodes</h2>
        <nav class="filters">{{#filters}}<a class="filter{{#selected}} selected{{/selected}}" href="/ui{{query}}">{{label}} <span class="muted">{{count}}</span></a>{{/filters}}</nav>
        <table id="nodes">
        <thead><tr><th>Node ID</th><th>Hostname</th><th>Last renewal</th><th>Status</th><th>Holder</th><th>Lease transitions</th><th>Fencing token</th><th></th></tr></thead>
        <tbody>
        {{#nodes}}<tr class="node" data-node-id="{{nodeId}}"><td class="node-id">{{nodeId}}</td><td class="hostname">{{hostname}}</td><td class="last-renewal">{{lastRenewal}} <span class="age">{{age}} ago</span></td><td class="status"><span class="badge status-{{status}}">{{status}}</span></td><td class="holder">{{holder}}</td><td class="transitions">{{transitions}}</td><td class="fencing-token">{{fencingToken}}</td><td class="actions">{{#forgettable}}<a href="/ui/nodes/{{nodeId}}/forget">Forget…</a>{{/forgettable}}</td></tr>
        {{/nodes}}
        {{^nodes}}<tr class="empty"><td colspan="8">No nodes{{#filter}} with status {{filter}}{{/filter}}.</td></tr>{{/nodes}}
        </tbody>
        </table>
        {{#truncated}}<p class="muted">Showing the first {{shown}} of {{total}}; filter by status to see others.</p>{{/truncated}}
        <h2>Replicas</h2>
        <table id="replicas">
        <thead><tr><th>Replica</th><th>Client address</th><th>Member</th><th>Role</th><th>Term</th><th>Leader</th><th>Commit</th><th>Applied</th><th>Behind the leader</th><th>Reachable</th></tr></thead>
        <tbody>
        {{#replicas}}<tr class="replica{{#isSelf}} self{{/isSelf}}" data-replica-id="{{replicaId}}"><td>{{replicaId}}{{#isSelf}} <span class="muted">(this one)</span>{{/isSelf}}</td><td>{{address}}</td><td>{{membership}}</td><td class="role">{{#isLeader}}<span class="badge leader">leader</span>{{/isLeader}}{{^isLeader}}{{role}}{{/isLeader}}</td><td>{{term}}</td><td>{{leader}}</td><td>{{commit}}</td><td>{{applied}}</td><td class="behind">{{behind}}</td><td class="reachable">{{#reachable}}<span class="badge ok">yes</span>{{/reachable}}{{^reachable}}<span class="badge bad">no</span>{{/reachable}}</td></tr>
        {{/replicas}}
        </tbody>
        </table>
        """

    static let login = top + """
        <main class="narrow">
        <h2>Sign in</h2>
        <p>This cluster needs a token with the <b>reader</b> role (or <b>admin</b>, to forget nodes).</p>
        {{#problem}}<p class="banner">{{.}}</p>{{/problem}}
        <form method="post" action="/ui/login">
        <label for="token">Token</label> <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
        <button type="submit">Sign in</button>
        </form>
        <p class="muted">The token is kept in a cookie for this console only (HttpOnly, SameSite=Strict, 12 hours).</p>
        </main>
        </body>
        </html>
        """

    static let confirmForget = top + """
        <main class="narrow">
        <h2>Forget node {{nodeId}}?</h2>
        <p>Node <b>{{nodeId}}</b> ({{hostname}}) is <span class="badge status-{{status}}">{{status}}</span>. Forgetting it frees its ID and its hostname: the next acquire for {{hostname}} may get another ID, and ID {{nodeId}} may go to another hostname.</p>
        <form method="post" action="/ui/nodes/{{nodeId}}/forget">
        <input type="hidden" name="csrf" value="{{csrf}}">
        <button type="submit" class="danger">Forget node {{nodeId}}</button> <a href="/ui">Cancel</a>
        </form>
        </main>
        </body>
        </html>
        """

    static let message = top + """
        <main class="narrow">
        <h2>{{heading}}</h2>
        <p{{#problem}} class="banner"{{/problem}}>{{text}}</p>
        <p><a href="/ui">Back to the cluster</a></p>
        </main>
        </body>
        </html>
        """

    static let css = """
        :root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ec; --bg: #f7f8fa; --ok: #1f7a3a; --warn: #9a6200; --bad: #b3261e; --accent: #2a5bd7; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
        header { display: flex; justify-content: space-between; align-items: center; padding: 12px 24px; background: #fff; border-bottom: 1px solid var(--line); }
        header h1 { font-size: 18px; margin: 0; } header h1 a { color: inherit; text-decoration: none; }
        main { padding: 8px 24px 24px; } main.narrow { max-width: 640px; }
        footer { padding: 0 24px 24px; }
        h2 { font-size: 15px; margin: 20px 0 8px; }
        .muted { color: var(--muted); font-weight: normal; }
        .inline { display: inline; }
        .summary { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
        .count { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
        .count.low { border-color: var(--warn); color: var(--warn); }
        .banner { margin: 12px 0; padding: 10px 14px; border-radius: 6px; background: #fdecea; color: var(--bad); border: 1px solid #f3c1bd; }
        .banner.warn { background: #fff5e0; color: var(--warn); border-color: #f0d9a8; }
        .notice { margin: 12px 24px 0; padding: 10px 14px; border-radius: 6px; background: #e8f3ec; color: var(--ok); }
        table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
        th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
        td.holder { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
        .age { color: var(--muted); font-size: 12px; }
        .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
        .status-active, .ok { background: #e3f4e8; color: var(--ok); }
        .status-stale { background: #fff1d6; color: var(--warn); }
        .status-inactive { background: #eceef2; color: var(--muted); }
        .bad { background: #fdecea; color: var(--bad); }
        .leader { background: #e6edfd; color: var(--accent); }
        tr.self td:first-child { font-weight: 600; }
        .filters { margin-bottom: 8px; display: flex; gap: 6px; }
        .filter { padding: 3px 10px; border: 1px solid var(--line); border-radius: 14px; background: #fff; color: var(--fg); text-decoration: none; }
        .filter.selected { border-color: var(--accent); color: var(--accent); }
        button { font: inherit; padding: 4px 12px; border-radius: 6px; border: 1px solid var(--line); background: #fff; cursor: pointer; }
        button.danger { border-color: var(--bad); color: #fff; background: var(--bad); }
        input { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 6px; width: 320px; }
        """

    /// Long polls `/ui/live` and swaps the live part in (server-rendered and escaped there);
    /// with no change, the poll returns after two seconds so the replicas' state stays fresh.
    static let js = """
        (function () {
          'use strict';
          var live = document.getElementById('live');
          var lost = document.getElementById('lost');
          if (!live || !window.fetch) { return; }
          var status = live.getAttribute('data-status') || '';
          var failures = 0;
          function show(text) { lost.textContent = text; lost.hidden = !text; }
          function next() {
            var q = 'waitIndex=' + encodeURIComponent(live.getAttribute('data-registry-index') || '0') + '&wait=2s';
            if (status) { q += '&status=' + encodeURIComponent(status); }
            return '/ui/live?' + q;
          }
          function poll() {
            // A replica that stops answering (paused, cut off) is noticed within 10 s.
            var abort = window.AbortController ? new AbortController() : null;
            var timer = abort ? window.setTimeout(function () { abort.abort(); }, 10000) : 0;
            fetch(next(), { credentials: 'same-origin', cache: 'no-store', signal: abort ? abort.signal : undefined }).then(function (r) {
              window.clearTimeout(timer);
              if (r.status === 401) { window.location.reload(); return; }
              if (!r.ok) { throw new Error('the replica answered ' + r.status); }
              var index = r.headers.get('X-NodeLease-Registry-Index');
              return r.text().then(function (html) {
                live.innerHTML = html;
                if (index) { live.setAttribute('data-registry-index', index); }
                failures = 0;
                show('');
              });
            }).catch(function (e) {
              window.clearTimeout(timer);
              failures += 1;
              show('Live updates paused: this replica cannot be reached (' + (e && e.message ? e.message : e) + '). Retrying; another replica\\'s console shows the cluster too.');
            }).then(function () {
              window.setTimeout(poll, failures ? Math.min(5000, 250 * Math.pow(2, failures)) : 0);
            });
          }
          poll();
        })();
        """

    static let favicon = """
        <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#2a5bd7"/><text x="8" y="12" font-size="10" text-anchor="middle" fill="#fff" font-family="sans-serif">N</text></svg>
        """
}
