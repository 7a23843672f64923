// Meridian's dashboard: one streamed fetch of /api/v1/stream (newline-delimited JSON:
// snapshots of the federation and live events) renders the page; operator actions are
// POSTs to /api/v1/... The token lives in this tab's memory only and travels in the
// Authorization header, never in a URL. Every element is built with textContent: names
// from the topology are never parsed as markup.
'use strict';

(() => {
  const MAX_EVENTS = 200;
  const MAX_NODE_ROWS = 500;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 15000;
  const SVG = 'http://www.w3.org/2000/svg';
  // Coarse coastlines (longitude, latitude), enough to place regions at a glance.
  const LAND = [
    [[-168, 66], [-162, 70], [-140, 70], [-125, 70], [-95, 72], [-80, 73], [-62, 66], [-55, 52], [-66, 44], [-76, 35], [-81, 25], [-82, 30], [-90, 29], [-97, 26], [-97, 20], [-88, 21], [-87, 15], [-83, 9], [-78, 8], [-86, 13], [-95, 16], [-105, 20], [-110, 23], [-115, 30], [-120, 34], [-124, 40], [-124, 48], [-133, 55], [-150, 60], [-165, 60]],
    [[-73, 78], [-60, 82], [-30, 83], [-20, 75], [-22, 70], [-40, 65], [-44, 60], [-52, 64], [-58, 75]],
    [[-78, 8], [-72, 12], [-62, 10], [-50, 0], [-35, -5], [-39, -15], [-48, -26], [-58, -38], [-65, -42], [-68, -52], [-75, -50], [-73, -40], [-71, -30], [-70, -18], [-76, -14], [-81, -5], [-80, 1]],
    [[-10, 36], [-9, 43], [-2, 44], [-5, 48], [2, 51], [8, 54], [10, 57], [5, 59], [5, 62], [14, 66], [20, 70], [30, 71], [40, 68], [60, 69], [80, 73], [100, 77], [120, 73], [140, 72], [160, 70], [180, 68], [180, 62], [165, 60], [160, 53], [143, 59], [135, 54], [140, 48], [130, 42], [127, 35], [121, 31], [122, 25], [110, 20], [108, 12], [105, 9], [100, 13], [99, 7], [104, 1], [98, 8], [97, 16], [92, 21], [87, 21], [80, 15], [77, 8], [73, 17], [67, 24], [57, 25], [56, 22], [52, 17], [44, 12], [40, 16], [35, 28], [34, 31], [36, 36], [30, 36], [27, 41], [23, 38], [22, 37], [20, 40], [15, 38], [12, 44], [8, 44], [3, 43], [-1, 37]],
    [[-17, 21], [-17, 15], [-12, 7], [-8, 4], [5, 5], [9, 4], [13, -5], [12, -17], [15, -28], [18, -34], [26, -34], [32, -28], [35, -22], [40, -15], [40, -5], [43, -1], [51, 11], [44, 11], [38, 18], [33, 28], [32, 31], [20, 32], [10, 37], [0, 36], [-6, 36], [-10, 30]],
    [[114, -22], [114, -34], [124, -34], [131, -31], [138, -35], [146, -39], [150, -37], [153, -28], [153, -25], [146, -19], [142, -11], [136, -12], [130, -12], [123, -17]],
    [[-5, 50], [1, 51], [0, 53], [-3, 56], [-5, 58], [-6, 56], [-5, 54], [-3, 54], [-5, 52]],
    [[130, 31], [135, 34], [140, 36], [142, 40], [141, 45], [144, 43], [141, 41], [140, 38], [136, 35], [131, 34]],
    [[109, 2], [117, 7], [119, 1], [116, -4], [110, -3]],
    [[95, 5], [98, 4], [104, -2], [106, -6], [101, -3]],
    [[172, -34], [178, -38], [175, -41], [168, -46], [172, -41]],
    [[44, -25], [47, -25], [50, -15], [49, -12], [44, -17]],
  ];

  const state = {
    token: null,
    who: null,
    overview: null,
    events: [],
    lastSeq: null,
    stream: null,
    retryMs: RETRY_MIN_MS,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fill(tbody, rows, empty, columns) {
    tbody.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: columns, class: 'muted' }, empty))]));
  }

  // --- formatting ---

  function age(at) {
    if (!at) return '-';
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(at)) / 1000));
    if (seconds < 60) return `${seconds}s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m${seconds % 60}s ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m ago`;
    return `${Math.floor(seconds / 86400)}d ago`;
  }

  const rate = (x) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
  const percent = (x) => `${(x * 100).toFixed(2)}%`;
  const ms = (x) => (x >= 100 ? `${x.toFixed(0)} ms` : `${x.toFixed(1)} ms`);
  const place = (region, zone) => (zone ? `${region} / ${zone}` : region || '-');

  // Routable (green), leaving (amber), out of service (red), unknown (grey).
  function health(status) {
    switch (status) {
      case 'healthy': return 'ok';
      case 'draining': return 'warn';
      case 'unhealthy': case 'failed': case 'quarantined': case 'lost': return 'bad';
      default: return 'unknown';
    }
  }

  // --- notices and the connection badge ---

  let noticeTimer = null;
  function notice(text, kind) {
    const box = $('notice');
    box.textContent = text;
    box.className = kind || 'info';
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.hidden = true; }, 15000);
  }

  function link(text, kind) {
    const badge = $('link');
    badge.textContent = text;
    badge.className = `link ${kind}`;
  }

  // --- the API ---

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let doc = null;
    try { doc = await response.json(); } catch (_) { doc = null; }
    if (!response.ok) {
      const error = new Error((doc && doc.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return doc;
  }

  // --- signing in and out ---

  async function signIn(event) {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    state.token = token;
    try {
      state.who = await api('GET', '/api/v1/whoami');
    } catch (error) {
      state.token = null;
      notice(`Sign-in refused: ${error.message}`, 'error');
      return;
    }
    $('token').value = '';
    $('sign-in-form').hidden = true;
    $('session').hidden = false;
    $('who').textContent = `${state.who.name} (${state.who.role})`;
    document.body.dataset.role = state.who.role;
    $('main').hidden = false;
    connect();
  }

  function signOut() {
    if (state.stream) state.stream.abort();
    Object.assign(state, { token: null, who: null, overview: null, events: [], lastSeq: null, stream: null });
    $('session').hidden = true;
    $('sign-in-form').hidden = false;
    $('main').hidden = true;
    delete document.body.dataset.role;
    link('not connected', 'off');
  }

  // --- the live stream ---

  async function connect() {
    const stream = new AbortController();
    state.stream = stream;
    link('connecting…', 'wait');
    try {
      const since = state.lastSeq === null ? '' : `?since=${state.lastSeq + 1}`;
      const response = await fetch(`/api/v1/stream${since}`, {
        headers: { Authorization: `Bearer ${state.token}` },
        signal: stream.signal,
        cache: 'no-store',
      });
      if (!response.ok) {
        let doc = null;
        try { doc = await response.json(); } catch (_) { doc = null; }
        const error = new Error((doc && doc.error) || response.statusText);
        error.status = response.status;
        throw error;
      }
      link('live', 'on');
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line) receive(JSON.parse(line));
        }
        state.retryMs = RETRY_MIN_MS;
      }
    } catch (error) {
      if (stream.signal.aborted) return;
      if (error.status === 401 || error.status === 403) {
        notice(`Signed out: ${error.message}`, 'error');
        signOut();
        return;
      }
      notice(`Live stream interrupted: ${error.message}`, 'error');
    }
    if (state.stream !== stream || stream.signal.aborted) return;
    // The stream ended (the control plane restarted, or the network dropped): reconnect,
    // resuming the events after the last one shown.
    link(`reconnecting in ${Math.round(state.retryMs / 1000)}s`, 'off');
    setTimeout(() => { if (state.stream === stream) connect(); }, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, RETRY_MAX_MS);
  }

  function receive(message) {
    switch (message.type) {
      case 'snapshot':
        state.overview = message.overview;
        render();
        break;
      case 'event':
        if (state.lastSeq !== null && message.event.seq <= state.lastSeq) break;
        state.lastSeq = message.event.seq;
        state.events.unshift(message.event);
        state.events.length = Math.min(state.events.length, MAX_EVENTS);
        renderEvents();
        break;
      case 'error':
        notice(`Live stream ended: ${message.error}`, 'error');
        if (message.code === 'Unauthenticated' || message.code === 'PermissionDenied') signOut();
        break;
      default:
        break;
    }
  }

  // --- rendering ---

  function render() {
    const o = state.overview;
    if (!o) return;
    renderSummary(o);
    renderMap(o);
    renderRegions(o);
    renderNodes(o);
    renderServices(o);
    renderProxies(o);
    renderFailovers(o);
    renderScaling(o);
  }

  function renderSummary(o) {
    const m = o.metrics;
    const card = (label, value, detail, kind) =>
      el('div', { class: `card ${kind || ''}` }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value), el('div', { class: 'detail' }, detail));
    const calls = m.traffic.reduce((sum, t) => sum + t.calls_per_second, 0);
    const troubled = m.nodes.unhealthy + m.nodes.lost;
    $('summary').replaceChildren(
      card('Federations', m.federations, `${m.regions} regions · ${m.services} services`),
      card('Nodes active', m.nodes.active, `${m.nodes.draining} draining`, m.nodes.draining ? 'warn' : 'ok'),
      card('Nodes out', troubled, `${m.nodes.unhealthy} unhealthy/failed · ${m.nodes.lost} lost`, troubled ? 'bad' : 'ok'),
      card('Proxies', `${m.proxies.in_sync}/${m.proxies.connected}`, 'in sync / connected', m.proxies.in_sync < m.proxies.connected ? 'warn' : 'ok'),
      card('Calls/s', rate(calls), `over the last ${Math.round(m.window_ms / 1000)} s`),
      card('Failovers', o.failovers.length, o.failovers.length ? 'active' : 'none active', o.failovers.length ? 'warn' : 'ok'),
    );
  }

  function nodesByRegion(o) {
    const byRegion = new Map();
    for (const n of o.nodes) {
      const counts = byRegion.get(n.region) || { total: 0, ok: 0, warn: 0, bad: 0, unknown: 0 };
      counts.total += 1;
      counts[health(n.status)] += 1;
      byRegion.set(n.region, counts);
    }
    return byRegion;
  }

  function regionHealth(counts) {
    if (!counts || counts.total === 0) return 'unknown';
    if (counts.bad === counts.total) return 'bad';
    if (counts.bad || counts.warn) return 'warn';
    return counts.ok ? 'ok' : 'unknown';
  }

  // An equirectangular world: x from longitude, y from latitude, a graticule every 30°.
  function renderMap(o) {
    const map = $('map');
    const x = (lon) => (lon + 180) * 2;
    const y = (lat) => (90 - lat) * 2;
    const parts = [svg('rect', { class: 'ocean', x: 0, y: 0, width: 720, height: 360 })];
    for (const outline of LAND) {
      parts.push(svg('polygon', { class: 'land', points: outline.map(([lon, lat]) => `${x(lon)},${y(lat)}`).join(' ') }));
    }
    for (let lon = -150; lon <= 150; lon += 30) {
      parts.push(svg('line', { class: lon === 0 ? 'meridian' : 'grid', x1: x(lon), y1: 0, x2: x(lon), y2: 360 }));
      parts.push(svg('text', { class: 'axis', x: x(lon) + 2, y: 354 }, `${lon}°`));
    }
    for (let lat = -60; lat <= 60; lat += 30) {
      parts.push(svg('line', { class: lat === 0 ? 'meridian' : 'grid', x1: 0, y1: y(lat), x2: 720, y2: y(lat) }));
      parts.push(svg('text', { class: 'axis', x: 2, y: y(lat) - 2 }, `${lat}°`));
    }
    const counts = nodesByRegion(o);
    for (const region of o.regions) {
      if (!region.location) continue;
      const cx = x(region.location.longitude);
      const cy = y(region.location.latitude);
      const c = counts.get(region.name);
      const dot = svg('circle', { class: `region ${regionHealth(c)}`, cx, cy, r: 7, 'data-region': region.name });
      dot.append(svg('title', {}, `${region.name}: ${c ? c.ok : 0}/${c ? c.total : 0} nodes routable`));
      parts.push(dot);
      parts.push(svg('text', { class: 'region-label', x: cx + 10, y: cy + 4 }, region.name));
    }
    map.replaceChildren(...parts);
  }

  function renderRegions(o) {
    const counts = nodesByRegion(o);
    const cards = o.regions.map((region) => {
      const c = counts.get(region.name) || { total: 0, ok: 0, warn: 0, bad: 0, unknown: 0 };
      const where = region.location ? `${region.location.latitude.toFixed(2)}, ${region.location.longitude.toFixed(2)}` : '-';
      return el('div', { class: `card region-card ${regionHealth(c)}`, 'data-region': region.name },
        el('div', { class: 'label' }, `${region.federation} · ${where}`),
        el('div', { class: 'value' }, region.name),
        el('div', { class: 'detail' }, `${c.ok} healthy · ${c.warn} draining · ${c.bad} out · ${c.unknown} unknown`),
        el('div', { class: 'detail' }, `zones: ${region.zones.join(', ')}`));
    });
    $('region-grid').replaceChildren(...cards);
  }

  // Rows with buttons are kept and updated in place, keyed by `key`, so a snapshot
  // arriving between a mouse press and its release never swallows the click.
  function syncRows(tbody, items, key, build, update, empty, columns) {
    if (!items.length) {
      fill(tbody, [], empty, columns);
      return;
    }
    const existing = new Map([...tbody.rows].filter((r) => r.dataset.key !== undefined).map((r) => [r.dataset.key, r]));
    for (const r of [...tbody.rows]) if (r.dataset.key === undefined) r.remove();
    items.forEach((item, index) => {
      const k = key(item);
      let row = existing.get(k);
      existing.delete(k);
      if (!row) {
        row = build(item);
        row.dataset.key = k;
      }
      update(row, item);
      if (tbody.rows[index] !== row) tbody.insertBefore(row, tbody.rows[index] || null);
    });
    for (const stale of existing.values()) stale.remove();
  }

  function setText(cell, text, title) {
    if (cell.textContent !== text) cell.textContent = text;
    if (title !== undefined) cell.title = title;
  }

  function renderNodes(o) {
    const filter = $('node-filter').value.trim().toLowerCase();
    const matches = (n) => !filter || [n.id, n.region, n.zone, n.status, n.address, ...n.services]
      .some((field) => String(field).toLowerCase().includes(filter));
    const nodes = o.nodes.filter(matches).sort((a, b) => a.id.localeCompare(b.id));
    const shown = nodes.slice(0, MAX_NODE_ROWS);
    const operator = state.who && state.who.role === 'operator';
    const action = (name, label, id) => el('button', {
      type: 'button', class: `action ${name}`, 'data-action': name, 'data-node': id,
    }, label);
    const build = (n) => el('tr', { 'data-node': n.id },
      el('td', { class: 'mono' }, n.id), el('td', {}), el('td', { class: 'mono' }), el('td', {}),
      el('td', {}, el('span', {})), el('td', { class: 'reason' }), el('td', {}),
      el('td', { class: 'buttons' }, action('drain', 'Drain', n.id), action('recover', 'Recover', n.id), action('fail', 'Fail', n.id)));
    const update = (row, n) => {
      const cells = row.cells;
      row.dataset.status = n.status;
      setText(cells[1], place(n.region, n.zone));
      setText(cells[2], n.address);
      setText(cells[3], n.services.join(', '));
      const badge = cells[4].firstChild;
      badge.className = `badge ${health(n.status)}`;
      setText(badge, n.status);
      setText(cells[5], n.status_reason || '-');
      setText(cells[6], age(n.status_since), n.status_since || '');
      for (const button of cells[7].children) {
        button.title = operator ? `${button.textContent} ${n.id}` : 'needs an operator token';
      }
    };
    syncRows($('nodes').tBodies[0], shown, (n) => n.id, build, update,
      filter ? 'no node matches the filter' : 'no nodes registered', 8);
    const more = $('nodes-more');
    more.hidden = nodes.length <= shown.length;
    more.textContent = `showing ${shown.length} of ${nodes.length} nodes; filter to narrow`;
  }

  function renderServices(o) {
    const traffic = new Map();
    for (const t of o.metrics.traffic) {
      const rows = traffic.get(t.service) || [];
      rows.push(t);
      traffic.set(t.service, rows);
    }
    const names = new Set([...o.services.map((s) => s.name), ...traffic.keys()]);
    const policies = new Map(o.services.map((s) => [s.name, s]));
    const rows = [...names].sort().map((name) => {
      const policy = policies.get(name);
      const regions = traffic.get(name) || [];
      const calls = regions.reduce((sum, t) => sum + t.calls_per_second, 0);
      const errors = calls ? regions.reduce((sum, t) => sum + t.error_rate * t.calls_per_second, 0) / calls : 0;
      const p99 = regions.reduce((worst, t) => Math.max(worst, t.latency_p99_ms), 0);
      const tiers = policy ? policy.failover.tiers.map((t) => t.name).join(' → ') : '';
      const summary = policy ? `${policy.algorithm}${tiers ? `; failover ${tiers}` : ''}` : 'no policy (defaults)';
      const byRegion = regions.map((t) => `${t.region} ${rate(t.calls_per_second)}/s p99 ${ms(t.latency_p99_ms)}`).join(' · ');
      return el('tr', { 'data-service': name },
        el('td', { class: 'mono' }, name),
        el('td', {}, summary),
        el('td', { class: 'num calls' }, regions.length ? rate(calls) : '-'),
        el('td', { class: `num ${errors > 0.01 ? 'bad-text' : ''}` }, regions.length ? percent(errors) : '-'),
        el('td', { class: 'num', title: 'worst region' }, regions.length ? ms(p99) : '-'),
        el('td', { class: 'detail' }, byRegion || 'no load reports yet'));
    });
    fill($('services').tBodies[0], rows, 'no services', 6);
    const select = $('failover-service');
    const chosen = select.value;
    select.replaceChildren(...[...names].sort().map((name) => el('option', { value: name }, name)));
    if (names.has(chosen)) select.value = chosen;
  }

  function renderProxies(o) {
    const rows = o.proxies.slice().sort((a, b) => a.proxy_id.localeCompare(b.proxy_id)).map((p) => {
      const lag = Math.max(0, p.sent_version - p.acked_version);
      const nack = p.last_nack ? `v${p.last_nack.version}: ${p.last_nack.error}` : '-';
      return el('tr', { 'data-proxy': p.proxy_id },
        el('td', { class: 'mono' }, p.proxy_id),
        el('td', {}, place(p.region, p.zone)),
        el('td', { class: 'num' }, p.acked_version),
        el('td', { class: 'num', title: `sent ${p.sent_version}` }, el('span', { class: `badge ${lag ? 'warn' : 'ok'}` }, lag ? `${lag} behind` : 'in sync')),
        el('td', { class: p.last_nack ? 'bad-text' : '' }, nack),
        el('td', { title: p.connected_since || '' }, age(p.connected_since)));
    });
    fill($('proxies').tBodies[0], rows, 'no proxies connected', 6);
  }

  function renderFailovers(o) {
    const build = (f) => el('tr', { 'data-failover': f.service },
      el('td', { class: 'mono' }, f.service), el('td', {}), el('td', { class: 'reason' }), el('td', {}), el('td', {}),
      el('td', {}, el('button', { type: 'button', class: 'action clear', 'data-action': 'clear', 'data-service': f.service }, 'Clear')));
    const update = (row, f) => {
      const cells = row.cells;
      setText(cells[1], f.target);
      setText(cells[2], f.reason || '-');
      setText(cells[3], f.started_by || '-');
      setText(cells[4], age(f.started_at), f.started_at || '');
    };
    syncRows($('failovers').tBodies[0], o.failovers, (f) => f.service, build, update, 'no active failover', 6);
  }

  function renderScaling(o) {
    const rows = o.scaling.filter((s) => s.history.length).map((s) => {
      const d = s.history[0];
      return el('tr', { 'data-service': s.service },
        el('td', { class: 'mono' }, s.service),
        el('td', { class: 'num' }, `${d.current_nodes} → ${d.desired_nodes}`),
        el('td', {}, d.rule),
        el('td', { class: 'reason' }, d.reason),
        el('td', {}, d.outcome),
        el('td', { title: d.decided_at || '' }, `${age(d.decided_at)} by ${d.decided_by || d.source}`));
    });
    fill($('scaling').tBodies[0], rows, 'no scaling decisions yet', 6);
  }

  function renderEvents() {
    const items = state.events.map((e) => el('li', { 'data-seq': e.seq, 'data-kind': e.kind },
      el('time', { datetime: e.at || '' }, e.at ? new Date(e.at).toLocaleTimeString() : '-'),
      el('span', { class: 'kind' }, e.kind),
      el('span', { class: 'subject mono' }, e.subject),
      el('span', { class: 'message' }, e.message),
      el('span', { class: 'cause' }, e.cause)));
    $('events').replaceChildren(...items);
  }

  // --- actions ---

  function reason(fallback) {
    return $('reason').value.trim() || fallback;
  }

  async function act(label, method, path, body) {
    try {
      await api(method, path, body);
      notice(`${label}: done`, 'ok');
    } catch (error) {
      notice(`${label}: refused: ${error.message}`, 'error');
    }
  }

  function onNodeAction(event) {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const id = button.dataset.node;
    const action = button.dataset.action;
    const path = `/api/v1/nodes/${encodeURIComponent(id)}/${action}`;
    act(`${action} ${id}`, 'POST', path, { reason: reason(`${action} from the dashboard`) });
  }

  function onFailoverClear(event) {
    const button = event.target.closest('button[data-action=clear]');
    if (!button) return;
    const service = button.dataset.service;
    act(`clear failover of ${service}`, 'POST', `/api/v1/failovers/${encodeURIComponent(service)}/clear`,
      { reason: reason('cleared from the dashboard') });
  }

  function onFailoverStart(event) {
    event.preventDefault();
    const service = $('failover-service').value;
    const target = $('failover-target').value.trim();
    if (!service || !target) {
      notice('Start failover: choose a service and name a target', 'error');
      return;
    }
    act(`failover of ${service} to ${target}`, 'POST', '/api/v1/failovers',
      { service, target, reason: reason('started from the dashboard') });
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('sign-in-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', signOut);
    $('nodes').addEventListener('click', onNodeAction);
    $('failovers').addEventListener('click', onFailoverClear);
    $('failover-form').addEventListener('submit', onFailoverStart);
    $('node-filter').addEventListener('input', () => { if (state.overview) renderNodes(state.overview); });
    $('token').focus();
  });
})();
