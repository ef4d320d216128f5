// @ts-check
// /login: sign in with a login and a password; then to the account's home page (/admin or /me). A lockout says
// until when (the server counts failures per account and per address).
import { byId } from "./dom.js";
import { accountErrorText, call, localPath, setUpPage, whoAmI } from "./account.js";

async function main() {
  setUpPage(null);
  const form = byId("login", HTMLFormElement);
  const error = byId("login-error");
  const submit = byId("login-submit", HTMLButtonElement);
  const already = await whoAmI().catch(() => null);
  if (already) {
    location.replace(localPath(already.home));
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
      location.assign(localPath(me.home));
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
