import { Match } from 'aws-cdk-lib/assertions';
import { configFile, synth } from './helpers';

const TWO_DESTINATIONS = `
destinations:
  - id: crm
    kind: webhook
    batch_size: 200
    concurrency: 3
    retry: { max_attempts: 4 }
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

function inlineStatements(template: ReturnType<typeof synth>, functionName: string): any[] {
  const fn = Object.values(template.findResources('AWS::Lambda::Function', {
    Properties: { FunctionName: functionName },
  }))[0] as any;
  const roleId = fn.Properties.Role['Fn::GetAtt'][0];
  const role = template.toJSON().Resources[roleId];
  return role.Properties.Policies.flatMap((p: any) => p.PolicyDocument.Statement);
}

describe('the stack from config/resync.yaml', () => {
  const template = synth();

  test('three functions on provided.al2023 arm64 with JSON logs and the config layer', () => {
    template.resourceCountIs('AWS::Lambda::Function', 3);
    template.allResourcesProperties('AWS::Lambda::Function', {
      Runtime: 'provided.al2023',
      Architectures: ['arm64'],
      Handler: 'bootstrap',
      LoggingConfig: Match.objectLike({ LogFormat: 'JSON' }),
      Layers: [Match.anyValue()],
      Environment: { Variables: Match.objectLike({ RESYNC_CONFIG: '/opt/resync.yaml', RESYNC_STACK: 'resync' }) },
    });
    template.hasResourceProperties('AWS::Lambda::Function', {
      FunctionName: 'resync-delivery-crm-webhook',
      Timeout: 60,
      Environment: { Variables: Match.objectLike({ RESYNC_DESTINATION: 'crm-webhook' }) },
    });
  });

  test('delivery reads its queue with partial batch responses, batch size, window and concurrency', () => {
    template.resourceCountIs('AWS::Lambda::EventSourceMapping', 1);
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      BatchSize: 200,
      MaximumBatchingWindowInSeconds: 1,
      FunctionResponseTypes: ['ReportBatchItemFailures'],
      ScalingConfig: { MaximumConcurrency: 5 },
    });
  });

  test('the delivery queue hides a batch for 6 × the timeout + the window and redrives above the threshold', () => {
    template.hasResourceProperties('AWS::SQS::Queue', {
      QueueName: 'resync-crm-webhook-delivery',
      VisibilityTimeout: 361,
      MaximumMessageSize: 262144,
      MessageRetentionPeriod: 345600,
      RedrivePolicy: { deadLetterTargetArn: Match.anyValue(), maxReceiveCount: 7 },
    });
    template.hasResourceProperties('AWS::SQS::Queue', {
      QueueName: 'resync-crm-webhook-dlq',
      MessageRetentionPeriod: 1209600,
    });
  });

  test('tables are on-demand with PITR, encryption, and TTL on expires_at for runs', () => {
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      TableName: 'resync-runs',
      KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }, { AttributeName: 'sk', KeyType: 'RANGE' }],
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      TimeToLiveSpecification: { AttributeName: 'expires_at', Enabled: true },
    });
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      TableName: 'resync-failed-rows',
      KeySchema: [{ AttributeName: 'sync_id', KeyType: 'HASH' }, { AttributeName: 'key', KeyType: 'RANGE' }],
    });
  });

  test('each sync has a schedule whose input is a full EventBridge event naming it', () => {
    for (const [sync, schedule] of [['customers', 'rate(15 minutes)'], ['accounts', 'cron(0 * * * ? *)']]) {
      const rules = template.findResources('AWS::Events::Rule', { Properties: { Name: `resync-${sync}` } });
      const rule = Object.values(rules)[0] as any;
      expect(rule.Properties.ScheduleExpression).toBe(schedule);
      const input = rule.Properties.Targets[0].InputTransformer.InputTemplate
        .replace('<resources>', '["arn:x"]')
        .replace(/<[a-z]+>/g, 'x');
      expect(JSON.parse(input)).toMatchObject({ 'detail-type': 'Scheduled Event', id: 'x', time: 'x', detail: { sync_id: sync } });
    }
    template.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(1 minute)', Name: 'resync-finalizer' });
  });

  test('the finalizer also runs when a run looks settled: a rule on the stack bus that delivery may put to', () => {
    const rule = Object.values(template.findResources('AWS::Events::Rule', { Properties: { Name: 'resync-run-settled' } }))[0] as any;
    expect(rule.Properties.EventPattern).toEqual({ source: ['resync'], 'detail-type': ['Run settled'] });
    expect(rule.Properties.EventBusName).toEqual({ Ref: expect.stringMatching(/EventBus/) });
    expect(rule.Properties.Targets[0].Arn['Fn::GetAtt'][0]).toMatch(/finalizer/);
    const delivery = Object.values(template.findResources('AWS::IAM::Role')).find((r: any) =>
      JSON.stringify(r.Properties.Policies).includes('ChangeMessageVisibility')) as any;
    const statements = delivery.Properties.Policies.flatMap((p: any) => p.PolicyDocument.Statement);
    expect(statements).toContainEqual(expect.objectContaining({ Sid: 'RunSettled', Action: 'events:PutEvents' }));
  });

  test('alarms: failed rows per sync, dead-letter depth, function errors', () => {
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'resync', MetricName: 'RowsFailed', Dimensions: [{ Name: 'SyncId', Value: 'customers' }],
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible' });
    expect(Object.keys(template.findResources('AWS::CloudWatch::Alarm', { Properties: { MetricName: 'Errors' } }))).toHaveLength(3);
  });

  test('roles carry one inline policy each: no attached policies, no wildcard action or resource', () => {
    template.resourceCountIs('AWS::IAM::Policy', 0);
    for (const role of Object.values(template.findResources('AWS::IAM::Role')) as any[]) {
      expect(role.Properties.ManagedPolicyArns).toBeUndefined();
      for (const statement of role.Properties.Policies.flatMap((p: any) => p.PolicyDocument.Statement)) {
        for (const action of [statement.Action].flat()) expect(action).not.toContain('*');
        for (const resource of [statement.Resource].flat()) expect(resource).not.toBe('*');
      }
    }
  });

  test('the delivery function reads exactly its destination secret', () => {
    const statements = inlineStatements(template, 'resync-delivery-crm-webhook');
    const secrets = statements.find((s) => s.Action === 'secretsmanager:GetSecretValue');
    expect(JSON.stringify(secrets.Resource)).toContain('secret:resync/crm-webhook-signing-??????');
  });
});

const PACKED = TWO_DESTINATIONS.replace('    retry: { max_attempts: 4 }\n', '    retry: { max_attempts: 4 }\n    packing: true\n    timeout_secs: 5\n')
  .replace('    webhook: { url: https://api.example.com/rows }\n', '    packing: true\n    webhook: { url: https://api.example.com/rows }\n');

describe('packed destinations', () => {
  const template = synth({ configPath: configFile(PACKED), stackPrefix: 'acme' });

  test('a packed destination receives as many messages per invocation as requests fit its function timeout', () => {
    // (60 s - 10 s of queue and ledger calls) / 5 s per request = 10; / 25 s = 2.
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', { BatchSize: 10, ScalingConfig: { MaximumConcurrency: 3 } });
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', { BatchSize: 2, ScalingConfig: { MaximumConcurrency: 5 } });
  });
});

describe('several destinations', () => {
  const template = synth({ configPath: configFile(TWO_DESTINATIONS), stackPrefix: 'acme' });

  test('one queue, dead-letter queue, delivery function and mapping per destination', () => {
    template.resourceCountIs('AWS::Lambda::Function', 4);
    template.resourceCountIs('AWS::Lambda::EventSourceMapping', 2);
    template.resourceCountIs('AWS::SQS::Queue', 4);
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', { BatchSize: 400, ScalingConfig: { MaximumConcurrency: 3 } });
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', { BatchSize: 200, ScalingConfig: { MaximumConcurrency: 5 } });
    template.hasResourceProperties('AWS::SQS::Queue', {
      QueueName: 'acme-crm-delivery', RedrivePolicy: Match.objectLike({ maxReceiveCount: 6 }),
    });
  });

  test('sync-start sends to every delivery queue and reads each sync bucket prefix; the finalizer drains every DLQ', () => {
    const send = inlineStatements(template, 'acme-sync-start').find((s) => [s.Action].flat().includes('sqs:SendMessage'));
    expect(send.Resource).toHaveLength(2);
    const reads = inlineStatements(template, 'acme-sync-start').filter((s) => s.Action === 's3:GetObject');
    expect(JSON.stringify(reads)).toContain('other-exports/orders/*');
    const drain = inlineStatements(template, 'acme-finalizer').find((s) => [s.Action].flat().includes('sqs:ReceiveMessage'));
    expect(drain.Resource).toHaveLength(2);
  });

  test('only the destination with a secret may read it', () => {
    const actions = (name: string) => inlineStatements(template, name).flatMap((s) => [s.Action].flat());
    expect(actions('acme-delivery-crm')).toContain('secretsmanager:GetSecretValue');
    expect(actions('acme-delivery-warehouse-api')).not.toContain('secretsmanager:GetSecretValue');
  });
});

test('a concurrency the SQS trigger cannot take is refused with the field named', () => {
  const text = TWO_DESTINATIONS.replace('concurrency: 3', 'concurrency: 1');
  expect(() => synth({ configPath: configFile(text) })).toThrow(/destinations\[0\]\.concurrency/);
});
