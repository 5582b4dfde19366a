/**
 * Issue 12, defect 9: the CDK roles against the calls the handlers were observed to
 * make (`tests/deploy/observed-calls.json`; see iam.ts). The delivery role lacked
 * `sqs:SendMessage`, which delivery needs to re-enqueue a rate-limited row as a delayed
 * copy on its own queue.
 */
import { loadConfig, parseConfig } from '../lib/config';
import { CONFIG, configFile, synth } from './helpers';
import { iamProblems, observedCalls } from './iam';

const TWO_DESTINATIONS = `
destinations:
  - id: crm
    kind: webhook
    webhook:
      url: https://crm.example.com/hook
      signing_secret: { secret_id: resync/crm }
  - id: warehouse-api
    kind: webhook
    webhook: { url: https://api.example.com/rows }
syncs:
  - id: customers
    source: { prefix: exports/customers/ }
    primary_key: id
    destination: crm
    schedule: rate(5 minutes)
  - id: orders
    source: { prefix: orders/, bucket: other-exports }
    primary_key: order_id
    destination: warehouse-api
    schedule: cron(0 3 * * ? *)
`;

/** The statements of the role of function `name` in a synthesised template. */
function statementsOf(template: any, name: string): any[] {
  const fn = Object.values<any>(template.Resources).find((r) => r.Type === 'AWS::Lambda::Function' && r.Properties.FunctionName === name);
  return template.Resources[fn.Properties.Role['Fn::GetAtt'][0]].Properties.Policies[0].PolicyDocument.Statement;
}

describe('each role grants exactly what its function was observed to call, on what it called', () => {
  const observed = observedCalls();

  test('config/resync.yaml', () => {
    expect(iamProblems(synth().toJSON(), loadConfig(CONFIG), observed)).toEqual([]);
  });

  test('two destinations, one sync in its own bucket: delivery sends to and reads secrets of its own destination only', () => {
    const template = synth({ configPath: configFile(TWO_DESTINATIONS), stackPrefix: 'acme' }).toJSON();
    expect(iamProblems(template, parseConfig(TWO_DESTINATIONS), observed, 'acme')).toEqual([]);
    const send = (name: string) => statementsOf(template, name)
      .filter((s) => [s.Action].flat().includes('sqs:SendMessage'))
      .flatMap((s) => [s.Resource].flat());
    expect(send('acme-delivery-crm')).toHaveLength(1);
    expect(JSON.stringify(send('acme-delivery-crm'))).toContain('crmdelivery');
    expect(send('acme-sync-start')).toHaveLength(2);
  });

  test('an existing source bucket', () => {
    const template = synth({ existingSourceBucket: 'my-exports' }).toJSON();
    expect(iamProblems(template, loadConfig(CONFIG), observed, 'resync', 'my-exports')).toEqual([]);
  });

  test('removing a used action from a role is caught, on the resource it is used on', () => {
    const template = synth().toJSON();
    const queue = statementsOf(template, 'resync-delivery-crm-webhook').find((s) => s.Sid === 'DeliveryQueue');
    queue.Action = queue.Action.filter((a: string) => a !== 'sqs:SendMessage');
    expect(iamProblems(template, loadConfig(CONFIG), observed)).toEqual([
      'resync-delivery-crm-webhook: IAM actions missing for observed calls: sqs:SendMessage on delivery-queue crm-webhook',
    ]);
  });

  test('an unobserved action, or a used one on another resource, is caught', () => {
    const template = synth().toJSON();
    const runs = statementsOf(template, 'resync-finalizer').find((s) => s.Sid === 'RunsTable');
    runs.Action.push('dynamodb:Scan');
    const events = statementsOf(template, 'resync-finalizer').find((s) => s.Sid === 'RunEvents');
    events.Resource = statementsOf(template, 'resync-finalizer').find((s) => s.Sid === 'Alerts').Resource;
    expect(iamProblems(template, loadConfig(CONFIG), observed)).toEqual([
      'resync-finalizer: IAM actions missing for observed calls: events:PutEvents on event-bus',
      'resync-finalizer: IAM actions beyond the observed calls (least privilege): dynamodb:Scan on runs-table, events:PutEvents on alert-topic',
    ]);
  });

  test('a new call without its grant is caught', () => {
    const withNewCall = { ...observed, delivery: { ...observed.delivery, 'dynamodb:DeleteItem': ['runs-table'] } };
    expect(iamProblems(synth().toJSON(), loadConfig(CONFIG), withNewCall)).toEqual([
      'resync-delivery-crm-webhook: IAM actions missing for observed calls: dynamodb:DeleteItem on runs-table',
    ]);
  });
});
