// @ts-check
// /login: sign in with a login and a password; then to the account's home page (/admin or /me). A lockout says
// until when (the server counts failures per account and per address). `?next=/library…` (a page of this site
// only) is where to go instead, e.g. back to the library after 登录 there.
import { byId } from "./dom.js";
import { accountErrorText, call, localPath, setUpPage, whoAmI } from "./account.js";

/** The page to go to after signing in: `?next=` when it is a path of this site (never another site's URL, nor
 *  `//host` or `/\host`, which browsers read as one), else the account's home page.
 *  @param {string} home */
function afterSignIn(home) {
  const next = new URLSearchParams(location.search).get("next") || "";
  // (no backslash or control character anywhere: browsers drop tabs and newlines, so "/\t/host" is "//host")
  return /^\/(?!\/)[^\\\u0000-\u001f\u007f]*$/.test(next) ? next : localPath(home);
}

async function main() {
  setUpPage(null);
  const form = byId("login", HTMLFormElement);
  const error = byId("login-error");
  const submit = byId("login-submit", HTMLButtonElement);
  const already = await whoAmI().catch(() => null);
  if (already) {
    location.replace(afterSignIn(already.home));
    return;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    submit.disabled = true;
    error.hidden = true;
    try {
      const me = await call("/api/login", { method: "POST",
        body: { login: String(data.get("login") || "").trim(), password: String(data.get("password") || "") } });
      location.assign(afterSignIn(me.home));
    } catch (err) {
      error.textContent = accountErrorText(err);
      error.hidden = false;
      byId("login-password", HTMLInputElement).value = "";
    } finally {
      submit.disabled = false;
    }
  });
}

main();
