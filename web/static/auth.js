// Loaded by app.js when a token is in play (AUTH_MODE=jwt): the demo login form, and
// downloads that carry the token (a link cannot send the Authorization header).
// Uses app.js's globals: $, api, list, formError, token.
"use strict";

function showLogin() {
  if ($("login")) return;
  const section = document.createElement("section");
  section.id = "login";
  section.setAttribute("aria-labelledby", "login-heading");
  section.innerHTML = `<h2 id="login-heading">Sign in</h2>
    <form id="login-form" class="start">
      <label>User name <input name="user" required maxlength="255" autocomplete="username"></label>
      <button type="submit">Sign in</button>
    </form>
    <p id="login-error" class="error" role="alert"></p>`;
  document.querySelector("main").prepend(section);
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const reply = await api("POST", "/api/dev/token", { user: new FormData(e.target).get("user") });
      localStorage.setItem("taskbeam.token", reply.token);
      location.reload();
    } catch (err) {
      $("login-error").textContent = err.status === 404
        ? "Sign in through your application (the demo login is off)." : err.message;
    }
  });
}
if (!token()) showLogin();

list.addEventListener("click", async (e) => {
  const link = e.target.closest("a.download");
  if (!link || !token()) return;
  e.preventDefault();
  const response = await fetch(link.href, { headers: { Authorization: `Bearer ${token()}` } });
  if (!response.ok) { formError.textContent = `Download failed (HTTP ${response.status})`; return; }
  const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  const save = document.createElement("a");
  save.href = URL.createObjectURL(await response.blob());
  save.download = name ? name[1] : "export";
  save.click();
  setTimeout(() => URL.revokeObjectURL(save.href), 60000);
});
