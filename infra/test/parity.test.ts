/**
 * Parity: template.yaml (as SAM deploys it, transformed offline by aws-sam-translator)
 * and the CDK construct (synthesised from config/resync.yaml) must build the same
 * stack on what matters: functions (runtime, architecture, memory, timeout,
 * environment, logging, layer), event sources and their settings, schedules and their
 * inputs, queues and redrive, tables and keys, alarms, log groups, and every IAM
 * statement per function (action, resource, condition).
 *
 * Resources are matched by their names (`resync-runs`, `resync-crm-webhook-delivery`,
 * ...), not logical ids, and references are rewritten to those names, so the two
 * templates compare although SAM and CDK spell them differently.
 * Needs python3 with aws-sam-translator (pip install aws-sam-cli or cfn-lint).
 */
import { execFileSync } from 'child_process';
import * as path from 'path';
import { REPO, synthTemplate } from './helpers';

type Json = any;

function samTemplate(): Json {
  const out = execFileSync('python3', [path.join(__dirname, '..', 'parity', 'sam_to_cfn.py'), path.join(REPO, 'template.yaml')], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(out);
}

/** The comparable model of a CloudFormation template. */
export function normalise(template: Json): Json {
  const resources: Record<string, Json> = template.Resources;
  const params: Record<string, string> = {};
  for (const [name, p] of Object.entries<Json>(template.Parameters ?? {})) {
    if (p.Default !== undefined) params[name] = p.Type === 'Number' ? Number(p.Default) as any : String(p.Default);
  }
  const condition = (c: Json): boolean => {
    if (typeof c === 'string') return condition(template.Conditions[c]);
    if (c['Fn::Equals']) return resolve(c['Fn::Equals'][0]) === resolve(c['Fn::Equals'][1]);
    if (c['Fn::Not']) return !condition(c['Fn::Not'][0]);
    if (c['Fn::And']) return c['Fn::And'].every(condition);
    if (c['Fn::Or']) return c['Fn::Or'].some(condition);
    if (c.Condition) return condition(c.Condition);
    throw new Error(`condition ${JSON.stringify(c)}`);
  };
  const nameOf = (id: string): string => {
    const r = resources[id];
    if (!r) throw new Error(`reference to unknown resource ${id}`);
    const p = r.Properties ?? {};
    switch (r.Type) {
      case 'AWS::Lambda::Function': return resolve(p.FunctionName);
      case 'AWS::SQS::Queue': return resolve(p.QueueName);
      case 'AWS::DynamoDB::Table': return resolve(p.TableName);
      case 'AWS::Events::EventBus':
      case 'AWS::Events::Rule': return resolve(p.Name);
      case 'AWS::SNS::Topic': return resolve(p.TopicName);
      case 'AWS::CloudWatch::Alarm': return resolve(p.AlarmName);
      case 'AWS::Logs::LogGroup': return resolve(p.LogGroupName);
      case 'AWS::S3::Bucket': return 'source-bucket';
      case 'AWS::Lambda::LayerVersion': return 'config-layer';
      case 'AWS::IAM::Role': return `role-of(${functionOfRole(id)})`;
      default: return `${r.Type}:${id}`;
    }
  };
  const functionOfRole = (roleId: string): string => {
    const fn = Object.values<Json>(resources).find(
      (r) => r.Type === 'AWS::Lambda::Function' && JSON.stringify(r.Properties.Role) === JSON.stringify({ 'Fn::GetAtt': [roleId, 'Arn'] }),
    );
    return fn ? resolve(fn.Properties.FunctionName) : roleId;
  };
  const ref = (name: string): string => {
    if (name.startsWith('AWS::')) return '${' + name + '}';
    if (name in params) return params[name];
    return `ref(${nameOf(name)})`;
  };
  const getAtt = (id: string, attr: string): string => `${nameOf(id)}.${attr}`;
  function resolve(v: Json): Json {
    if (Array.isArray(v)) return v.map(resolve);
    if (v === null || typeof v !== 'object') return v;
    const keys = Object.keys(v);
    if (keys.length === 1) {
      const [k] = keys;
      const a = v[k];
      if (k === 'Ref') return ref(a);
      if (k === 'Fn::GetAtt') return Array.isArray(a) ? getAtt(a[0], a[1]) : getAtt(a.split('.')[0], a.split('.').slice(1).join('.'));
      if (k === 'Fn::Join') return resolve(a[1]).join(a[0]);
      if (k === 'Fn::If') return condition(a[0]) ? resolve(a[1]) : resolve(a[2]);
      if (k === 'Fn::Sub') {
        const [text, vars] = Array.isArray(a) ? a : [a, {}];
        return text.replace(/\$\{([^}]+)\}/g, (_: string, name: string) => {
          if (name in vars) return String(resolve(vars[name]));
          if (name.includes('.')) return getAtt(name.split('.')[0], name.split('.').slice(1).join('.'));
          return ref(name);
        });
      }
    }
    return Object.fromEntries(keys.map((key) => [key, resolve(v[key])]));
  }

  const live = Object.entries<Json>(resources).filter(([, r]) => !r.Condition || condition(r.Condition));
  const ofType = (type: string) => live.filter(([, r]) => r.Type === type);
  const byName = (type: string, drop: string[] = []) =>
    Object.fromEntries(ofType(type).map(([id, r]) => {
      const props = resolve(r.Properties ?? {});
      for (const key of drop) delete props[key];
      return [nameOf(id), { ...props, DeletionPolicy: r.DeletionPolicy ?? 'Delete', UpdateReplacePolicy: r.UpdateReplacePolicy ?? 'Delete' }];
    }));

  const statementsOf = (roleId: string): string[] => {
    const role = resources[roleId];
    const documents: Json[] = (role.Properties.Policies ?? []).map((p: Json) => p.PolicyDocument);
    for (const [, policy] of ofType('AWS::IAM::Policy')) {
      if (JSON.stringify(policy.Properties.Roles).includes(`"${roleId}"`)) documents.push(policy.Properties.PolicyDocument);
    }
    const out: string[] = [];
    for (const statement of documents.flatMap((d) => d.Statement)) {
      const s = resolve(statement);
      for (const action of [s.Action].flat()) {
        for (const resource of [s.Resource].flat()) {
          out.push(`${s.Effect} ${action} on ${resource}${s.Condition ? ' if ' + JSON.stringify(s.Condition) : ''}`);
        }
      }
    }
    for (const arn of role.Properties.ManagedPolicyArns ?? []) out.push(`managed ${JSON.stringify(resolve(arn))}`);
    return out.sort();
  };

  const functions = Object.fromEntries(ofType('AWS::Lambda::Function').map(([, r]) => {
    const p = r.Properties;
    return [resolve(p.FunctionName), {
      runtime: p.Runtime,
      architectures: p.Architectures,
      handler: p.Handler,
      memory: p.MemorySize,
      timeout: p.Timeout,
      description: p.Description,
      environment: resolve(p.Environment?.Variables ?? {}),
      logging: resolve(p.LoggingConfig),
      layers: resolve(p.Layers ?? []),
      reservedConcurrency: p.ReservedConcurrentExecutions,
      iam: statementsOf(p.Role['Fn::GetAtt'][0]),
    }];
  }));
  const eventSources = ofType('AWS::Lambda::EventSourceMapping').map(([, r]) => resolve(r.Properties))
    .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
  const rules = Object.fromEntries(ofType('AWS::Events::Rule').map(([id, r]) => {
    const p = resolve(r.Properties);
    return [nameOf(id), {
      ...p,
      State: p.State ?? 'ENABLED',
      Targets: p.Targets.map((t: Json) => ({ Arn: t.Arn, Input: t.Input, InputTransformer: t.InputTransformer, RetryPolicy: t.RetryPolicy })),
    }];
  }));
  const permissions = ofType('AWS::Lambda::Permission').map(([, r]) => resolve(r.Properties))
    // A function is named by its name (Ref) or its ARN (GetAtt): the same function.
    .map((p) => ({ ...p, FunctionName: String(p.FunctionName).replace(/^ref\((.*)\)$/, '$1').replace(/\.Arn$/, '') }))
    .map((p) => `${p.Action} ${p.FunctionName} by ${p.Principal} from ${p.SourceArn}`).sort();
  const layers = ofType('AWS::Lambda::LayerVersion').map(([, r]) => {
    const { Content, ...rest } = resolve(r.Properties);
    return { ...rest, DeletionPolicy: r.DeletionPolicy ?? 'Delete' };
  });
  const counts: Record<string, number> = {};
  for (const [, r] of live) counts[r.Type] = (counts[r.Type] ?? 0) + 1;

  return {
    resourceCounts: counts,
    functions,
    eventSources,
    rules,
    permissions,
    layers,
    queues: byName('AWS::SQS::Queue', ['QueueName']),
    tables: byName('AWS::DynamoDB::Table', ['TableName']),
    alarms: byName('AWS::CloudWatch::Alarm', ['AlarmName']),
    logGroups: byName('AWS::Logs::LogGroup', ['LogGroupName']),
    buckets: byName('AWS::S3::Bucket', ['Tags']),
    topics: byName('AWS::SNS::Topic', ['TopicName']),
    buses: byName('AWS::Events::EventBus', ['Name']),
  };
}

/** Paths at which two models differ, for a readable failure. */
export function differences(a: Json, b: Json, at = ''): string[] {
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  if (a && b && typeof a === 'object' && typeof b === 'object' && Array.isArray(a) === Array.isArray(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => differences(a[k], b[k], `${at}/${k}`));
  }
  return [`${at}: SAM ${JSON.stringify(a)} ≠ CDK ${JSON.stringify(b)}`];
}

describe('template.yaml and the CDK construct deploy the same stack', () => {
  const sam = samTemplate();
  const cdk = synthTemplate();

  test('on functions, event sources, schedules, queues, tables, alarms and IAM', () => {
    const diff = differences(normalise(sam), normalise(cdk));
    expect(diff).toEqual([]);
  });

  test('the model covers what matters (a drift in one setting is reported)', () => {
    const model = normalise(sam);
    expect(Object.keys(model.functions).sort()).toEqual(['resync-delivery-crm-webhook', 'resync-finalizer', 'resync-sync-start']);
    expect(model.functions['resync-delivery-crm-webhook'].iam).toContain(
      'Allow sqs:ChangeMessageVisibility on resync-crm-webhook-delivery.Arn',
    );
    // Issue 12, defect 9: a rate-limited row's delayed copy goes back on the same queue.
    expect(model.functions['resync-delivery-crm-webhook'].iam).toContain(
      'Allow sqs:SendMessage on resync-crm-webhook-delivery.Arn',
    );
    const drifted = JSON.parse(JSON.stringify(sam));
    drifted.Resources.CrmWebhookDeliveryQueue.Properties.RedrivePolicy.maxReceiveCount = 5;
    drifted.Resources.CrmWebhookDeliveryRole.Properties.Policies[0].PolicyDocument.Statement[1].Action.push('dynamodb:DeleteItem');
    const diff = differences(normalise(drifted), normalise(cdk));
    expect(diff.join('\n')).toMatch(/queues\/resync-crm-webhook-delivery\/RedrivePolicy\/maxReceiveCount/);
    expect(diff.join('\n')).toMatch(/dynamodb:DeleteItem/);
  });
});
