// DOM helpers shared by the console's views (console.ts, operator.ts).
// Text goes in through textContent only, never innerHTML.

/** The one element matching `selector`; the page is broken without it. */
export function $<T extends Element>(selector: string): T {
  const found = document.querySelector<T>(selector);
  if (!found) throw new Error(`console page: ${selector} missing`);
  return found;
}

/** A new element, with a class and text if given. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
