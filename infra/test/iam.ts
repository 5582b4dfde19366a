/**
 * IAM from observation (issue 12, defect 9), for the CDK synth: each function's role
 * grants exactly the calls its binary was observed to make across the e2e suite
 * (`tests/deploy/observed-calls.json`, recorded with RESYNC_CALL_LOG), each on the
 * resource it was made on (its own destination's queue and secrets for a delivery
 * function, every destination's for sync-start and the finalizer), plus writing its own
 * logs. A missing grant is a call that fails with AccessDenied on AWS; an extra one
 * (CloudWatch Logs aside) is privilege no call uses. The deploy suite
 * (`tests/deploy/iam.rs`) checks template.yaml the same way.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ResyncConfig } from '../lib/config';
import { REPO } from './helpers';

type Json = any;

/** function binary → IAM action → resource kinds (`runs-table`, `delivery-queue`, ...). */
export type Observed = Record<string, Record<string, string[]>>;

export const OBSERVED_CALLS = path.join(REPO, 'tests', 'deploy', 'observed-calls.json');

export function observedCalls(): Observed {
  return JSON.parse(fs.readFileSync(OBSERVED_CALLS, 'utf8')).functions;
}

/** Lambda writes these, not the handler: required, and exempt from "granted means observed". */
const LOG_ACTIONS = ['logs:CreateLogStream', 'logs:PutLogEvents'];

/** A CloudFormation value as text: `ref(Id)`, `getatt(Id.Arn)`, `${AWS::Partition}`, joins. */
function resolve(value: Json): string {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') {
    if (typeof value.Ref === 'string') return value.Ref.startsWith('AWS::') ? '${' + value.Ref + '}' : `ref(${value.Ref})`;
    if (Array.isArray(value['Fn::GetAtt'])) return `getatt(${value['Fn::GetAtt'].join('.')})`;
    if (Array.isArray(value['Fn::Join'])) return value['Fn::Join'][1].map(resolve).join(value['Fn::Join'][0]);
  }
  return JSON.stringify(value);
}

interface Subject {
  name: string;
  binary: string;
  /** A delivery function's destination. */
  destination?: string;
  logGroup?: string;
  roleId: string;
}

/** The template's functions, by the binary each runs (from its name and RESYNC_DESTINATION). */
function subjects(resources: Record<string, Json>, prefix: string): Subject[] {
  return Object.values<Json>(resources)
    .filter((r) => r.Type === 'AWS::Lambda::Function')
    .map((r) => {
      const p = r.Properties;
      const destination: string | undefined = p.Environment?.Variables?.RESYNC_DESTINATION;
      const name: string = p.FunctionName;
      const binary = destination ? 'delivery' : name.slice(prefix.length + 1);
      return { name, binary, destination, logGroup: p.LoggingConfig?.LogGroup?.Ref, roleId: p.Role['Fn::GetAtt'][0] };
    });
}

/** The resources an observed kind stands for, for one function. */
function neededOn(kind: string, subject: Subject, config: ResyncConfig): string[] {
  const destinations = config.destinations.filter((d) => !subject.destination || d.id === subject.destination);
  switch (kind) {
    case 'runs-table':
    case 'failed-rows-table':
    case 'event-bus':
    case 'alert-topic':
      return [kind];
    case 'source-bucket':
      return [...new Set(config.syncs.map((s) => `${kind} ${s.bucket ?? ''}`.trim()))];
    case 'source-object':
      return config.syncs.map((s) => `${kind} ${s.bucket ?? ''}/${s.prefix}`);
    case 'delivery-queue':
    case 'dead-letter-queue':
      return destinations.map((d) => `${kind} ${d.id}`);
    case 'destination-secret':
      return destinations.flatMap((d) => d.secretIds.map((id) => `${kind} ${id}`));
    default:
      return [`unclassified ${kind}`];
  }
}

/** What a granted resource is, in the stack's naming (`unclassified ...` if nothing). */
function grantedOn(resource: Json, subject: Subject, resources: Record<string, Json>, config: ResyncConfig, prefix: string, existingBucket?: string): string {
  const text = resolve(resource);
  const referenced = /^(?:ref\((\w+)\)|getatt\((\w+)\.Arn\))$/.exec(text);
  if (referenced) {
    const id = referenced[1] ?? referenced[2];
    const r = resources[id];
    const p = r?.Properties ?? {};
    switch (r?.Type) {
      case 'AWS::DynamoDB::Table':
        if (p.TableName === `${prefix}-runs`) return 'runs-table';
        if (p.TableName === `${prefix}-failed-rows`) return 'failed-rows-table';
        break;
      case 'AWS::SQS::Queue':
        for (const d of config.destinations) {
          if (p.QueueName === `${prefix}-${d.id}-delivery`) return `delivery-queue ${d.id}`;
          if (p.QueueName === `${prefix}-${d.id}-dlq`) return `dead-letter-queue ${d.id}`;
        }
        break;
      case 'AWS::Events::EventBus':
        if (p.Name === `${prefix}-events`) return 'event-bus';
        break;
      case 'AWS::SNS::Topic':
        if (p.TopicName === `${prefix}-alerts`) return 'alert-topic';
        break;
      case 'AWS::Logs::LogGroup':
        if (id === subject.logGroup && p.LogGroupName === `/aws/lambda/${subject.name}`) return 'log-group';
        break;
    }
    return `unclassified ${text}`;
  }
  const s3 = /^arn:\$\{AWS::Partition\}:s3:::([^/]+)(?:\/(.*))?$/.exec(text);
  if (s3) {
    const [, bucket, object] = s3;
    const own = /^ref\((\w+)\)$/.exec(bucket);
    const label = (own && resources[own[1]]?.Type === 'AWS::S3::Bucket') || bucket === existingBucket ? '' : bucket;
    if (!config.syncs.some((s) => (s.bucket ?? '') === label)) return `unclassified ${text}`;
    if (object === undefined) return `source-bucket ${label}`.trim();
    return object.endsWith('*') ? `source-object ${label}/${object.slice(0, -1)}` : `unclassified ${text}`;
  }
  const secret = /^arn:\$\{AWS::Partition\}:secretsmanager:[^:]+:[^:]+:secret:(.+)-\?{6}$/.exec(text)?.[1] ?? text;
  if (config.destinations.some((d) => d.secretIds.includes(secret))) return `destination-secret ${secret}`;
  return `unclassified ${text}`;
}

/** Every role of `template` (synthesised CloudFormation) against the observation. */
export function iamProblems(template: Json, config: ResyncConfig, observed: Observed, prefix = 'resync', existingBucket?: string): string[] {
  const resources: Record<string, Json> = template.Resources;
  const problems: string[] = [];
  for (const subject of subjects(resources, prefix)) {
    const needed = new Set(LOG_ACTIONS.map((a) => `${a} on log-group`));
    for (const [action, kinds] of Object.entries(observed[subject.binary] ?? {})) {
      for (const kind of kinds) for (const on of neededOn(kind, subject, config)) needed.add(`${action} on ${on}`);
    }
    const granted = new Set<string>();
    const role = resources[subject.roleId];
    for (const statement of (role.Properties.Policies ?? []).flatMap((p: Json) => p.PolicyDocument.Statement)) {
      for (const action of [statement.Action].flat()) {
        for (const resource of [statement.Resource].flat()) {
          granted.add(`${action} on ${grantedOn(resource, subject, resources, config, prefix, existingBucket)}`);
        }
      }
    }
    const missing = [...needed].filter((g) => !granted.has(g)).sort();
    const extra = [...granted].filter((g) => !needed.has(g) && !g.startsWith('logs:')).sort();
    if (missing.length) problems.push(`${subject.name}: IAM actions missing for observed calls: ${missing.join(', ')}`);
    if (extra.length) problems.push(`${subject.name}: IAM actions beyond the observed calls (least privilege): ${extra.join(', ')}`);
  }
  return problems;
}
