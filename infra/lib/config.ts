/**
 * The parts of resync's sync configuration (the YAML file the functions read) that shape
 * the stack, with the defaults of shared/src/config.rs, and the queue settings of
 * shared/src/resources.rs (`QueueSettings::for_destination`). The Rust loader stays the
 * validator of record: this reads only what the infrastructure needs.
 */
import * as fs from 'fs';
import { parse } from 'yaml';

/** `DELIVERY_FUNCTION_TIMEOUT_SECS` in shared/src/resources.rs. */
export const DELIVERY_FUNCTION_TIMEOUT_SECS = 60;
const QUEUE_RETENTION_SECS = 4 * 24 * 3600;
const DLQ_RETENTION_SECS = 14 * 24 * 3600;
const MAX_MESSAGE_BYTES = 262_144;
const ID = /^[a-z0-9][a-z0-9-]*$/;

export interface DestinationSpec {
  readonly id: string;
  readonly kind: string;
  readonly batchSize: number;
  readonly concurrency: number;
  readonly maxAttempts: number;
  /** `timeout_secs`: one destination request's timeout. */
  readonly timeoutSecs: number;
  /** `packing`: rows travel in segments, one request per message. */
  readonly packing: boolean;
  /** Secrets Manager names or ARNs the destination reads (`secret_id`). */
  readonly secretIds: string[];
}

export interface SyncSpec {
  readonly id: string;
  readonly prefix: string;
  /** Own bucket, or undefined for the stack's source bucket. */
  readonly bucket?: string;
  readonly destination: string;
  readonly schedule: string;
  readonly warnFailedRows: number;
}

export interface ResyncConfig {
  readonly destinations: DestinationSpec[];
  readonly syncs: SyncSpec[];
}

/** `QueueSettings::for_destination`. */
export interface QueueSettings {
  readonly visibilityTimeoutSecs: number;
  readonly maxMessageBytes: number;
  readonly retentionSecs: number;
  readonly maxReceiveCount: number;
  readonly dlqRetentionSecs: number;
  readonly eventBatchSize: number;
  readonly batchingWindowSecs: number;
}

export function queueSettings(destination: DestinationSpec): QueueSettings {
  const batchingWindowSecs = 1;
  return {
    visibilityTimeoutSecs: 6 * DELIVERY_FUNCTION_TIMEOUT_SECS + batchingWindowSecs,
    maxMessageBytes: MAX_MESSAGE_BYTES,
    retentionSecs: QUEUE_RETENTION_SECS,
    maxReceiveCount: destination.maxAttempts + 2,
    dlqRetentionSecs: DLQ_RETENTION_SECS,
    eventBatchSize: destination.packing
      ? // Messages, each at most one request, as many as fit the function's timeout
        // after its 10 s of queue and ledger calls (`INVOCATION_OVERHEAD_SECS`).
        Math.min(10, Math.max(1, Math.floor((DELIVERY_FUNCTION_TIMEOUT_SECS - 10) / destination.timeoutSecs)))
      : Math.min(1000, Math.max(20, destination.batchSize * 2)),
    batchingWindowSecs,
  };
}

function fail(field: string, message: string): never {
  throw new Error(`configuration field '${field}': ${message}`);
}

function secretIdsOf(value: unknown): string[] {
  // Any `{ secret_id: ... }` anywhere in the destination's own section.
  if (Array.isArray(value)) return value.flatMap(secretIdsOf);
  if (value && typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>).flatMap(([key, inner]) =>
      key === 'secret_id' && typeof inner === 'string' ? [inner] : secretIdsOf(inner),
    );
  }
  return [];
}

/** Parses YAML text of a sync configuration. */
export function parseConfig(text: string): ResyncConfig {
  const raw = parse(text) ?? {};
  const destinations: DestinationSpec[] = (raw.destinations ?? []).map((d: any, i: number) => {
    const at = `destinations[${i}]`;
    if (typeof d?.id !== 'string' || !ID.test(d.id)) fail(`${at}.id`, 'want a-z, 0-9 and -');
    const concurrency = d.concurrency ?? 5;
    // Lambda's SQS event source mapping takes a MaximumConcurrency of 2..1000.
    if (!Number.isInteger(concurrency) || concurrency < 2 || concurrency > 1000) {
      fail(`${at}.concurrency`, 'a deployment needs 2..1000 (the SQS trigger\'s MaximumConcurrency)');
    }
    return {
      id: d.id,
      kind: d.kind,
      batchSize: d.batch_size ?? 100,
      concurrency,
      maxAttempts: d.retry?.max_attempts ?? 5,
      timeoutSecs: d.timeout_secs ?? 25,
      packing: d.packing === true,
      secretIds: secretIdsOf(d),
    };
  });
  const syncs: SyncSpec[] = (raw.syncs ?? []).map((s: any, i: number) => {
    const at = `syncs[${i}]`;
    if (typeof s?.id !== 'string' || !ID.test(s.id)) fail(`${at}.id`, 'want a-z, 0-9 and -');
    if (!destinations.some((d) => d.id === s.destination)) {
      fail(`${at}.destination`, `no destination with id '${s.destination}'`);
    }
    if (typeof s.source?.prefix !== 'string') fail(`${at}.source.prefix`, 'missing');
    if (typeof s.schedule !== 'string') fail(`${at}.schedule`, 'missing');
    return {
      id: s.id,
      prefix: s.source.prefix,
      bucket: s.source.bucket,
      destination: s.destination,
      schedule: s.schedule,
      warnFailedRows: s.alert?.warn_failed_rows ?? 1,
    };
  });
  return { destinations, syncs };
}

/** Reads and parses a sync configuration file. */
export function loadConfig(path: string): ResyncConfig {
  return parseConfig(fs.readFileSync(path, 'utf8'));
}
