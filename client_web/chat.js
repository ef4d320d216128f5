// @ts-check
// What both pages do when their chat form is submitted.

/** Send the text of `input` as a chat message of `session` (the form's `submit` event `e`): nothing for an
 *  empty text or before the session exists (false), else the input is cleared once the server took it
 *  (true). `send` (the form's button) is disabled meanwhile; each page enables it again as its state says.
 *  A refusal (ProtocolError) is thrown for the page to show.
 *  @param {Event} e  @param {{chat: (text: string) => Promise<unknown>} | null} session
 *  @param {HTMLInputElement} input  @param {HTMLButtonElement} send
 *  @returns {Promise<boolean>} */
export async function submitChat(e, session, input, send) {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || !session) return false;
  send.disabled = true;
  await session.chat(text);
  input.value = "";
  return true;
}
