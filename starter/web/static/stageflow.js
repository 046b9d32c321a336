// Stageflow's pages: a little JavaScript, and every page works without it.
// - the release page's stages refresh while something runs (no reload);
// - a running task's log follows as it is written;
// - a deferral's time is read in the person's own time zone, which is shown.
"use strict";

function refreshStages() {
  const part = document.getElementById("stages");
  if (!part || part.dataset.running !== "yes") return;
  // Someone filling in one of its forms is not interrupted.
  const filling = [...part.querySelectorAll("input:not([type=hidden])")].some((el) => el.value);
  if (filling || (part.contains(document.activeElement) && document.activeElement.tagName === "INPUT")) {
    setTimeout(refreshStages, 2000);
    return;
  }
  fetch(part.dataset.refresh, { credentials: "same-origin" })
    .then((answer) => (answer.ok ? answer.text() : Promise.reject(answer.status)))
    .then((html) => {
      const next = new DOMParser().parseFromString(html, "text/html").getElementById("stages");
      if (next && next.innerHTML !== part.innerHTML) {
        part.replaceWith(next);
        setUpTimeZones(next);
      }
      const badge = document.querySelector("[data-testid=release-status]");
      if (next && badge) badge.textContent = next.dataset.status;
    })
    .catch(() => {})
    .finally(() => setTimeout(refreshStages, 2000));
}

function followLog() {
  // A running task's log, streamed as its agent writes it, until the task ends.
  const log = document.querySelector("pre[data-follow]");
  if (!log) return;
  const state = document.querySelector("[data-testid=log-state]");
  const decoder = new TextDecoder();
  fetch(log.dataset.follow, { credentials: "same-origin" })
    .then((answer) => {
      if (!answer.ok || !answer.body) return Promise.reject(answer.status);
      const reader = answer.body.getReader();
      const read = () =>
        reader.read().then(({ done, value }) => {
          if (value) {
            log.textContent += decoder.decode(value, { stream: true });
            log.scrollTop = log.scrollHeight;
          }
          if (done) {
            if (state) state.textContent = "the task is over";
            return undefined;
          }
          return read();
        });
      return read();
    })
    .catch(() => {
      if (state) state.textContent = "the log could not be followed: reload the page";
    });
}

function setUpTimeZones(root) {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "your browser's";
  root.querySelectorAll("[data-tz]").forEach((el) => (el.textContent = zone));
  root.querySelectorAll("[data-tz-offset]").forEach((el) => {
    const form = el.form;
    const field = form && form.querySelector("input[name=defer_until]");
    const offset = () => {
      // The offset of the moment asked for (summer time may differ from now).
      const moment = field && field.value ? new Date(field.value) : new Date();
      el.value = String(moment.getTimezoneOffset());
    };
    offset();
    if (field) field.addEventListener("change", offset);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpTimeZones(document);
  setTimeout(refreshStages, 2000);
  followLog();
});
