// The console's progressive enhancement: the pages refresh themselves, the action buttons
// call the API (asking for confirmation, and for the token when the server has one), and
// the API's answer is shown as it is, a refusal explained.
"use strict";

const NAMES = { approve: "approve", reject: "reject", cancel: "cancel",
                "retry-compensation": "retry the compensations of" };
const WHY_REFUSED = {
  401: "The API token is missing or wrong: type the server's API_TOKEN at the top of the page.",
  404: "There is no such order.",
  409: "The saga's state does not allow this now (it may have moved on since the page was drawn; the page has been refreshed).",
  422: "The request was not valid.",
  503: "The service could not reach its database; try again shortly.",
};

function remembered(id, store) {
  const input = document.getElementById(id);
  if (!input) return;
  input.value = store.getItem("saga-console:" + id) || "";
  input.addEventListener("input", () => store.setItem("saga-console:" + id, input.value));
}

function busy(regions) {
  // Don't redraw under someone who is typing a reason, or while an action is on its way.
  const inputs = regions.flatMap((r) => [...r.querySelectorAll("input")]);
  if (inputs.some((i) => i === document.activeElement || i.value)) return true;
  return document.body.dataset.acting === "true";
}

async function refresh(force) {
  // Every element marked data-live is redrawn from a fresh copy of the same page.
  const regions = [...document.querySelectorAll("[data-live]")];
  if (!regions.length || (!force && busy(regions))) return;
  let response;
  try {
    response = await fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
  } catch (error) {
    return; // the server is away (restarting?): the next tick tries again
  }
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const region of regions) {
    const fresh = page.getElementById(region.id);
    if (fresh) region.replaceWith(document.adoptNode(fresh));
  }
  document.body.dataset.refreshMs = page.body.dataset.refreshMs;
  document.title = page.title;
  wire();
}

function schedule() {
  const ms = Number(document.body.dataset.refreshMs || 0);
  if (ms > 0) setTimeout(async () => { await refresh(false); schedule(); }, ms);
}

function say(text, kind) {
  const answer = document.getElementById("answer");
  answer.textContent = text;
  answer.className = "answer " + kind;
}

function detailOf(body) {
  if (!body || body.detail === undefined) return "";
  if (Array.isArray(body.detail)) {
    return body.detail.map((e) => (e.loc || []).join(".") + ": " + e.msg).join("; ");
  }
  return String(body.detail);
}

async function act(button) {
  const form = button.closest("form");
  const order = form.dataset.order;
  const action = button.dataset.action;
  const reason = form.querySelector("input[name=reason]").value.trim();
  const operator = (document.getElementById("operator")?.value || "").trim();
  const tokenInput = document.getElementById("token");
  if (action === "cancel" && !reason) {
    say("A cancel needs a reason: type it in the reason field.", "refused");
    return;
  }
  if (tokenInput && !tokenInput.value) {
    say("This server needs its API token to act: type it at the top of the page.", "refused");
    tokenInput.focus();
    return;
  }
  const question = `Really ${NAMES[action]} order ${order}?` + (reason ? `\nReason: ${reason}` : "");
  if (!window.confirm(question)) {
    say("Nothing was done.", "info");
    return;
  }
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (operator) headers["X-Operator"] = operator;
  if (tokenInput) headers.Authorization = "Bearer " + tokenInput.value;
  document.body.dataset.acting = "true";
  let text, kind;
  try {
    const response = await fetch(`/orders/${encodeURIComponent(order)}/${action}`, {
      method: "POST", headers, body: JSON.stringify(reason ? { reason } : {}),
    });
    let body = null;
    try { body = await response.json(); } catch (error) { body = null; }
    if (response.status === 202) {
      text = `${response.status} Accepted: ${action} of ${order} recorded (the saga was ${body.state}; this page follows it).`;
      kind = "accepted";
      form.querySelector("input[name=reason]").value = "";
    } else {
      const why = WHY_REFUSED[response.status] || "The service refused.";
      text = `${response.status} ${response.statusText}: ${detailOf(body)}. ${why}`;
      kind = "refused";
    }
  } catch (error) {
    text = `The service could not be reached (${error.message}); nothing is known to have been done.`;
    kind = "refused";
  } finally {
    document.body.dataset.acting = "false";
  }
  say(text, kind);
  await refresh(true);
}

function wire() {
  for (const button of document.querySelectorAll("button.action")) {
    button.addEventListener("click", () => act(button));
  }
  for (const countdown of document.querySelectorAll(".countdown")) {
    const deadline = Date.parse(countdown.dataset.deadline);
    const tick = () => {
      const s = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
      countdown.textContent = s === 0 ? "passed" : h ? `${h} h ${String(m).padStart(2, "0")} min`
        : `${m} min ${String(r).padStart(2, "0")} s`;
    };
    clearInterval(countdown._timer);
    countdown._timer = setInterval(tick, 1000);
  }
}

remembered("operator", localStorage);
remembered("token", sessionStorage);
wire();
schedule();
