// The ES module entry point: the same classes as index.cjs, so `instanceof` agrees between both.
import meterd from "./index.cjs";

export const {
  Client,
  ClientClosedError,
  DEFAULT_SOCKET,
  DEFAULT_TIMEOUT_MS,
  MeterdError,
  MeterdTimeoutError,
  RETRYABLE,
} = meterd;
export default meterd;
