/** One usage event; `id` is generated when absent. Unknown fields are refused by meterd. */
export interface Event {
  customer_aws_account_id?: string;
  customer_identifier?: string;
  license_arn?: string;
  /** The event's product; required when meterd serves several products (aws.products). */
  product_code?: string;
  dimension: string;
  /** 0..2147483647 */
  quantity: number;
  /** RFC 3339 text or epoch seconds; default: when meterd receives the event. */
  timestamp?: string | number;
  /** At most 5 pairs; they become the record's UsageAllocations. */
  tags?: Record<string, string>;
  /** Idempotency key, 1 to 128 bytes. */
  id?: string;
}

/** meterd stored the event durably; `duplicate`: it had stored this id before. */
export interface Ack {
  id: string;
  duplicate: boolean;
}

export type WireCode =
  | "invalid_json"
  | "missing_field"
  | "invalid_field"
  | "unknown_dimension"
  | "out_of_window"
  | "future_timestamp"
  | "line_too_long"
  | "quantity_overflow"
  | "overloaded"
  | "storage_error"
  | "permission_denied"
  | "id_conflict"
  | "record_too_large"
  | "unknown_product";

export const DEFAULT_SOCKET: string;
export const DEFAULT_TIMEOUT_MS: number;
export const RETRYABLE: readonly WireCode[];

/** meterd refused the event. */
export class MeterdError extends Error {
  readonly code: WireCode;
  /** The id meterd echoed; undefined when the line had no readable id. */
  readonly id: string | undefined;
  /** The event as sent, with its id. */
  readonly event: Event & { id: string };
  /** True for overloaded and storage_error. */
  readonly retryable: boolean;
}

export class MeterdTimeoutError extends Error {
  readonly code: "ETIMEDOUT";
  readonly unanswered: Array<Event & { id: string }>;
  readonly results: Array<Ack | MeterdError | undefined>;
}

export class ClientClosedError extends Error {
  readonly code: "ERR_METERD_CLOSED";
}

export interface SendOptions {
  /** Milliseconds for this call, reconnections included. */
  timeout?: number;
}

export class Client {
  constructor(path?: string, options?: { timeout?: number });
  send(event: Event, options?: SendOptions): Promise<Ack>;
  sendMany(events: Iterable<Event>, options?: SendOptions): Promise<Array<Ack | MeterdError>>;
  close(): void;
}

declare const meterd: {
  Client: typeof Client;
  ClientClosedError: typeof ClientClosedError;
  DEFAULT_SOCKET: string;
  DEFAULT_TIMEOUT_MS: number;
  MeterdError: typeof MeterdError;
  MeterdTimeoutError: typeof MeterdTimeoutError;
  RETRYABLE: readonly WireCode[];
};
export default meterd;
