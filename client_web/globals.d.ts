// What the lesson pages expose for tests and the browser's console: `window.ketang` (the session, its peer
// connections and what is on screen), read by tests/browser/.
export {};

declare global {
  interface Window {
    ketang: object;
  }
}
