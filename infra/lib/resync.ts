/**
 * `Resync`: the whole resync stack from one sync configuration file — the same
 * resources, names, settings and IAM as template.yaml (`npm run parity` compares them).
 *
 * - the configuration file's directory becomes a layer (the functions read
 *   `/opt/<file name>` through RESYNC_CONFIG);
 * - per destination: a delivery queue, its dead-letter queue, a delivery function
 *   (RESYNC_DESTINATION) on an SQS event source mapping, and alarms;
 * - per sync: a schedule rule whose input is a full EventBridge event naming the sync,
 *   and a failed-rows alarm;
 * - one sync-start and one finalizer (every minute); tables, bucket, bus and topic.
 * Names and queue settings follow shared/src/resources.rs.
 */
import * as path from 'path';
import { ArnFormat, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { RustFunction } from 'cargo-lambda-cdk';
import { Construct } from 'constructs';
import {
  DELIVERY_FUNCTION_TIMEOUT_SECS,
  DestinationSpec,
  loadConfig,
  queueSettings,
  ResyncConfig,
} from './config';

export interface ResyncProps {
  /** The sync configuration file (its directory is bundled as the config layer). */
  readonly configPath: string;
  /** Name prefix of every resource (RESYNC_STACK). Default `resync`. */
  readonly stackPrefix?: string;
  /** The workspace's Cargo.toml. Default: the repository's. */
  readonly manifestPath?: string;
  /** Cargo profile of the bootstraps. Default `lambda` (LTO, one codegen unit, stripped). */
  readonly cargoProfile?: string;
  /** Use this existing bucket as the source bucket instead of creating one. */
  readonly existingSourceBucket?: string;
  /** Subscribe this e-mail address to the alert topic. */
  readonly alertEmail?: string;
  /** Log retention. Default one month. */
  readonly logRetention?: logs.RetentionDays;
}

interface FunctionSpec {
  readonly name: string;
  readonly binary: string;
  readonly description: string;
  readonly memorySize: number;
  readonly timeout: Duration;
  readonly statements: iam.PolicyStatement[];
  readonly environment?: Record<string, string>;
}

export class Resync extends Construct {
  public readonly config: ResyncConfig;
  public readonly runsTable: dynamodb.Table;
  public readonly failedRowsTable: dynamodb.Table;
  public readonly sourceBucket: s3.IBucket;
  public readonly eventBus: events.EventBus;
  public readonly alertTopic: sns.Topic;
  public readonly syncStart: lambda.Function;
  public readonly finalizer: lambda.Function;
  public readonly deliveryQueues: Record<string, sqs.Queue> = {};
  public readonly deadLetterQueues: Record<string, sqs.Queue> = {};
  public readonly deliveryFunctions: Record<string, lambda.Function> = {};

  private readonly props: ResyncProps;
  private readonly prefix: string;
  private readonly layer: lambda.LayerVersion;
  private readonly environment: Record<string, string>;

  constructor(scope: Construct, id: string, props: ResyncProps) {
    super(scope, id);
    this.props = props;
    this.config = loadConfig(props.configPath);
    const prefix = (this.prefix = props.stackPrefix ?? 'resync');
    const stack = Stack.of(this);

    this.layer = new lambda.LayerVersion(this, 'ConfigLayer', {
      layerVersionName: `${prefix}-config`,
      description: 'The sync configuration (config/), mounted at /opt.',
      code: lambda.Code.fromAsset(path.dirname(path.resolve(props.configPath))),
      // The same Runtime object RustFunction builds (runtimes compare by family too).
      compatibleRuntimes: [new lambda.Runtime('provided.al2023')],
      compatibleArchitectures: [lambda.Architecture.ARM_64],
      removalPolicy: RemovalPolicy.DESTROY,
    });

    const table = (name: string, partition: string, sort: string, ttl?: string) =>
      new dynamodb.Table(this, name, {
        tableName: `${prefix}-${name === 'RunsTable' ? 'runs' : 'failed-rows'}`,
        partitionKey: { name: partition, type: dynamodb.AttributeType.STRING },
        sortKey: { name: sort, type: dynamodb.AttributeType.STRING },
        billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
        pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
        encryption: dynamodb.TableEncryption.AWS_MANAGED,
        timeToLiveAttribute: ttl,
        removalPolicy: RemovalPolicy.RETAIN,
      });
    this.runsTable = table('RunsTable', 'pk', 'sk', 'expires_at');
    this.failedRowsTable = table('FailedRowsTable', 'sync_id', 'key');

    this.sourceBucket = props.existingSourceBucket
      ? s3.Bucket.fromBucketName(this, 'SourceBucket', props.existingSourceBucket)
      : new s3.Bucket(this, 'SourceBucket', {
          encryption: s3.BucketEncryption.S3_MANAGED,
          blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
          removalPolicy: RemovalPolicy.RETAIN,
        });
    this.eventBus = new events.EventBus(this, 'EventBus', { eventBusName: `${prefix}-events` });
    this.alertTopic = new sns.Topic(this, 'AlertTopic', { topicName: `${prefix}-alerts` });
    if (props.alertEmail) {
      this.alertTopic.addSubscription(new subscriptions.EmailSubscription(props.alertEmail));
    }
    this.environment = {
      RESYNC_CONFIG: `/opt/${path.basename(props.configPath)}`,
      RESYNC_STACK: prefix,
      RESYNC_SOURCE_BUCKET: this.sourceBucket.bucketName,
      RESYNC_EVENT_BUS: this.eventBus.eventBusName,
      RESYNC_ALERT_TOPIC_ARN: this.alertTopic.topicArn,
    };

    // Queues first: sync-start sends to every delivery queue, the finalizer drains
    // every dead-letter queue.
    for (const destination of this.config.destinations) {
      const settings = queueSettings(destination);
      const dlq = new sqs.Queue(this, `${destination.id}-dlq`, {
        queueName: `${prefix}-${destination.id}-dlq`,
        retentionPeriod: Duration.seconds(settings.dlqRetentionSecs),
        encryption: sqs.QueueEncryption.SQS_MANAGED,
      });
      this.deadLetterQueues[destination.id] = dlq;
      this.deliveryQueues[destination.id] = new sqs.Queue(this, `${destination.id}-delivery`, {
        queueName: `${prefix}-${destination.id}-delivery`,
        visibilityTimeout: Duration.seconds(settings.visibilityTimeoutSecs),
        maxMessageSizeBytes: settings.maxMessageBytes,
        retentionPeriod: Duration.seconds(settings.retentionSecs),
        encryption: sqs.QueueEncryption.SQS_MANAGED,
        deadLetterQueue: { queue: dlq, maxReceiveCount: settings.maxReceiveCount },
      });
    }

    const defaultBucketSyncs = this.config.syncs.filter((s) => !s.bucket);
    const sourceStatements: iam.PolicyStatement[] = [];
    const bucketArn = (bucket: string) => stack.formatArn({ service: 's3', region: '', account: '', resource: bucket });
    const byBucket = new Map<string, string[]>();
    for (const sync of this.config.syncs) {
      const bucket = sync.bucket ?? this.sourceBucket.bucketName;
      byBucket.set(bucket, [...(byBucket.get(bucket) ?? []), sync.prefix]);
    }
    byBucket.forEach((prefixes, bucket) => {
      const own = defaultBucketSyncs.length > 0 && bucket === this.sourceBucket.bucketName;
      sourceStatements.push(
        new iam.PolicyStatement({
          sid: own ? 'SourceList' : undefined,
          actions: ['s3:ListBucket'],
          resources: [bucketArn(bucket)],
          conditions: { StringLike: { 's3:prefix': prefixes.map((p) => `${p}*`) } },
        }),
        new iam.PolicyStatement({
          sid: own ? 'SourceRead' : undefined,
          actions: ['s3:GetObject'],
          resources: prefixes.map((p) => `${bucketArn(bucket)}/${p}*`),
        }),
      );
    });

    const reporting = [
      new iam.PolicyStatement({ sid: 'RunEvents', actions: ['events:PutEvents'], resources: [this.eventBus.eventBusArn] }),
      new iam.PolicyStatement({ sid: 'Alerts', actions: ['sns:Publish'], resources: [this.alertTopic.topicArn] }),
    ];

    this.syncStart = this.rustFunction({
      name: 'sync-start',
      binary: 'sync-start',
      description: 'Opens a run of one sync when its schedule fires.',
      memorySize: 1024,
      timeout: Duration.seconds(900),
      statements: [
        new iam.PolicyStatement({
          sid: 'RunsTable',
          actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:Query'],
          resources: [this.runsTable.tableArn],
        }),
        new iam.PolicyStatement({ sid: 'FailedRowIndex', actions: ['dynamodb:Query'], resources: [this.failedRowsTable.tableArn] }),
        ...sourceStatements,
        new iam.PolicyStatement({
          sid: 'DeliveryQueues',
          actions: ['sqs:GetQueueUrl', 'sqs:GetQueueAttributes', 'sqs:SendMessage'],
          resources: Object.values(this.deliveryQueues).map((q) => q.queueArn),
        }),
        ...reporting,
      ],
    });

    for (const sync of this.config.syncs) {
      // A full EventBridge event whose detail names the sync, with the firing's own
      // id and time (the run id derives from them).
      const rule = new events.CfnRule(this, `${sync.id}-schedule`, {
        name: `${prefix}-${sync.id}`,
        description: `Starts a run of sync '${sync.id}'.`,
        scheduleExpression: sync.schedule,
        state: 'ENABLED',
        targets: [
          {
            id: 'sync-start',
            arn: this.syncStart.functionArn,
            inputTransformer: {
              inputPathsMap: { id: '$.id', time: '$.time', account: '$.account', region: '$.region', resources: '$.resources' },
              inputTemplate:
                '{"version": "0", "id": "<id>", "detail-type": "Scheduled Event", "source": "aws.events", ' +
                '"account": "<account>", "time": "<time>", "region": "<region>", "resources": <resources>, ' +
                `"detail": {"sync_id": "${sync.id}"}}`,
            },
          },
        ],
      });
      this.syncStart.addPermission(`${sync.id}-schedule-permission`, {
        principal: new iam.ServicePrincipal('events.amazonaws.com'),
        sourceArn: rule.attrArn,
      });
      this.alarm(`${sync.id}-rows-failed`, `A run of sync '${sync.id}' ended with failed rows.`,
        new cloudwatch.Metric({ namespace: 'resync', metricName: 'RowsFailed', dimensionsMap: { SyncId: sync.id }, statistic: 'Sum', period: Duration.minutes(5) }));
    }
    this.alarm('sync-start-errors', 'sync-start failed (a run could not start).', this.syncStart.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }));

    this.finalizer = this.rustFunction({
      name: 'finalizer',
      binary: 'finalizer',
      description: 'Closes settled runs, keeps the failed-row index exact, reports.',
      memorySize: 512,
      timeout: Duration.seconds(120),
      statements: [
        new iam.PolicyStatement({
          sid: 'RunsTable',
          actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query'],
          resources: [this.runsTable.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'FailedRowIndex',
          actions: ['dynamodb:Query', 'dynamodb:BatchWriteItem'],
          resources: [this.failedRowsTable.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'DeadLetterQueues',
          actions: ['sqs:GetQueueUrl', 'sqs:GetQueueAttributes', 'sqs:ReceiveMessage', 'sqs:DeleteMessage'],
          resources: Object.values(this.deadLetterQueues).map((q) => q.queueArn),
        }),
        ...reporting,
      ],
    });
    new events.Rule(this, 'finalizer-schedule', {
      ruleName: `${prefix}-finalizer`,
      description: 'Runs the finalizer for every sync (detail {}).',
      schedule: events.Schedule.expression('rate(1 minute)'),
      targets: [new targets.LambdaFunction(this.finalizer)],
    });
    // The update that makes a run look settled (delivery, or sync-start when the rows
    // settled while planning) puts this event: the run closes within seconds of its last
    // row instead of at the next tick. The schedule stays the guarantee.
    new events.Rule(this, 'run-settled', {
      ruleName: `${prefix}-run-settled`,
      eventBus: this.eventBus,
      eventPattern: { source: ['resync'], detailType: ['Run settled'] },
      targets: [new targets.LambdaFunction(this.finalizer)],
    });
    this.alarm('finalizer-errors', 'The finalizer failed.', this.finalizer.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }));

    for (const destination of this.config.destinations) {
      this.addDelivery(destination);
    }
  }

  private addDelivery(destination: DestinationSpec): void {
    const stack = Stack.of(this);
    const settings = queueSettings(destination);
    const queue = this.deliveryQueues[destination.id];
    const secretArn = (id: string) =>
      id.startsWith('arn:')
        ? id
        : stack.formatArn({ service: 'secretsmanager', resource: 'secret', resourceName: `${id}-??????`, arnFormat: ArnFormat.COLON_RESOURCE_NAME });
    const statements = [
      new iam.PolicyStatement({
        sid: 'RunsTable',
        actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
        resources: [this.runsTable.tableArn],
      }),
      // The event source mapping receives and deletes with this role; the handler hides
      // retries (ChangeMessageVisibility) and re-enqueues rate-limited rows as delayed
      // copies on its own queue (SendMessage).
      new iam.PolicyStatement({
        sid: 'DeliveryQueue',
        actions: [
          'sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl',
          'sqs:ChangeMessageVisibility', 'sqs:SendMessage',
        ],
        resources: [queue.queueArn],
      }),
      new iam.PolicyStatement({ sid: 'RunSettled', actions: ['events:PutEvents'], resources: [this.eventBus.eventBusArn] }),
    ];
    if (destination.secretIds.length > 0) {
      statements.push(
        new iam.PolicyStatement({
          sid: 'DestinationSecrets',
          actions: ['secretsmanager:GetSecretValue'],
          resources: destination.secretIds.map(secretArn),
        }),
      );
    }
    const fn = this.rustFunction({
      name: `delivery-${destination.id}`,
      binary: 'delivery',
      description: `Delivers rows to destination '${destination.id}'.`,
      memorySize: 512,
      timeout: Duration.seconds(DELIVERY_FUNCTION_TIMEOUT_SECS),
      statements,
      environment: { RESYNC_DESTINATION: destination.id },
    });
    this.deliveryFunctions[destination.id] = fn;
    new lambda.EventSourceMapping(this, `${destination.id}-event-source`, {
      target: fn,
      eventSourceArn: queue.queueArn,
      batchSize: settings.eventBatchSize,
      maxBatchingWindow: Duration.seconds(settings.batchingWindowSecs),
      reportBatchItemFailures: true,
      maxConcurrency: destination.concurrency,
    });
    const dlq = this.deadLetterQueues[destination.id];
    this.alarm(`${destination.id}-dlq-depth`, `Messages of destination '${destination.id}' crashed the delivery function.`,
      dlq.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: Duration.minutes(5) }));
    this.alarm(`delivery-${destination.id}-errors`, `The delivery function of '${destination.id}' failed whole batches.`,
      fn.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }));
  }

  private rustFunction(spec: FunctionSpec): lambda.Function {
    const functionName = `${this.prefix}-${spec.name}`;
    const logGroup = new logs.LogGroup(this, `${spec.name}-logs`, {
      logGroupName: `/aws/lambda/${functionName}`,
      retention: this.props.logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    // An explicit role with one inline policy: exactly the calls the handler makes on
    // its own resources, nothing added behind its back.
    const role = new iam.Role(this, `${spec.name}-role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      inlinePolicies: {
        [spec.name]: new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({
              sid: 'Logs',
              actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
              resources: [logGroup.logGroupArn],
            }),
            ...spec.statements,
          ],
        }),
      },
    });
    return new RustFunction(this, spec.name, {
      functionName,
      description: spec.description,
      manifestPath: this.props.manifestPath ?? path.join(__dirname, '..', '..', 'Cargo.toml'),
      binaryName: spec.binary,
      architecture: lambda.Architecture.ARM_64,
      bundling: { profile: this.props.cargoProfile ?? 'lambda' },
      role,
      memorySize: spec.memorySize,
      timeout: spec.timeout,
      layers: [this.layer],
      loggingFormat: lambda.LoggingFormat.JSON,
      applicationLogLevelV2: lambda.ApplicationLogLevel.INFO,
      systemLogLevelV2: lambda.SystemLogLevel.WARN,
      logGroup,
      environment: { ...this.environment, ...(spec.environment ?? {}) },
    });
  }

  private alarm(name: string, description: string, metric: cloudwatch.IMetric): void {
    const alarm = new cloudwatch.Alarm(this, `${name}-alarm`, {
      alarmName: `${this.prefix}-${name}`,
      alarmDescription: description,
      metric,
      threshold: 1,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    alarm.addAlarmAction(new cwActions.SnsAction(this.alertTopic));
  }
}
